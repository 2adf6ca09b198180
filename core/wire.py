"""Sinch JSON on the wire: what events (``core.events``) and SVAML (``core.svaml``) share.

Both are ``msgspec.Struct`` types: frozen, camelCase on the wire (``rename="camel"``),
read with ``msgspec.convert`` and written with ``msgspec.json``. Rules beyond types live
in each struct's ``__post_init__``, which raises a ``ValueError`` naming its field
relative to the struct; msgspec wraps it in a ``ValidationError`` that carries the path
of the struct (``- at `$.to```) and keeps the original as ``__cause__``. ``split`` and
``expected`` read msgspec's errors back, so that both modules can name the field at fault
in their own words.
"""

from __future__ import annotations

import re

import msgspec

_EXPECTED = re.compile(r"Expected `([^`]*)`")
# msgspec's type names in the order that decides the wording ("int | decimal": integer)
LABELS = {
    "int": "an integer",
    "decimal": "a number",
    "str": "a string",
    "bool": "a boolean",
    "object": "an object",
    "array": "an array",
}


def split(exc: msgspec.ValidationError) -> tuple[str, str]:
    """(message, dotted path) of a msgspec validation error: ``Expected `str`, got `int`
    - at `$.to.endpoint``` gives ``("Expected `str`, got `int`", "to.endpoint")``; the
    path is ``""`` for the object itself."""
    text = str(exc)
    message, sep, at = text.rpartition(" - at `$")
    if not sep:
        return text, ""
    return message, at[:-1].lstrip(".")


def join(path: str, name: str) -> str:
    """``name`` below ``path`` (either may be empty)."""
    return f"{path}.{name}" if path and name else path or name


def expected(message: str) -> str | None:
    """The kind of value a msgspec type error asks for (a key of ``LABELS``), or None
    when ``message`` is no type error."""
    match = _EXPECTED.match(message)
    if match is None:
        return None
    kinds = match.group(1).split(" | ")
    return next((kind for kind in LABELS if kind in kinds), None)


def missing(message: str) -> str | None:
    """The field a msgspec "missing required field" error names, or None."""
    prefix = "Object missing required field `"
    return message[len(prefix) : -1] if message.startswith(prefix) else None


def unknown(message: str) -> str | None:
    """The field a msgspec "unknown field" error names, or None."""
    prefix = "Object contains unknown field `"
    return message[len(prefix) : -1] if message.startswith(prefix) else None
