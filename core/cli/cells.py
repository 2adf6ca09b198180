"""CSV that a spreadsheet opens as data, never as a formula.

A CSV export carries what callers sent (a caller id, a destination) and what plugins
say of a call; a spreadsheet runs a cell that begins with ``=``, ``+``, ``-`` or ``@``
(and some begin one after a tab or a carriage return) as a formula, which can fetch a
URL or run a command on the operator's machine. Such a cell is written with a single
quote before it, which spreadsheets show as text and do not evaluate. A phone number in
E.164 form (``+`` and digits) begins with ``+`` but is no formula: it is kept as it is,
so that exports still match the numbers the calls view shows.

Rows end in CRLF (RFC 4180), so that the ``csv`` module quotes a cell holding a carriage
return: with ``\n`` line ends it does not, and a spreadsheet then starts a new row at
the CR, where the rest of the cell (``=1+1``) is a formula again.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any, TextIO

from core.events import is_e164

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """``value`` as a CSV cell: text that a spreadsheet would read as a formula gets a
    leading ``'``; an E.164 number and anything but text are unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not is_e164(value):
        return "'" + value
    return value


class CsvWriter:
    """``csv.writer`` whose every cell is ``csv_cell``'s, with CRLF line ends."""

    def __init__(self, stream: TextIO) -> None:
        self._out = csv.writer(stream, lineterminator="\r\n")

    def writerow(self, row: Iterable[Any]) -> None:
        self._out.writerow([csv_cell(value) for value in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def csv_writer(stream: TextIO) -> CsvWriter:
    """A CSV writer for an export: no cell a spreadsheet would run as a formula."""
    return CsvWriter(stream)
