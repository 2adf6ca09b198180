"""One public API: a plugin imports everything it needs from ``core``, and the built-in
plugins and the example package show it by importing nothing else of the core."""

from __future__ import annotations

import ast
from pathlib import Path

import core

REPO = Path(__file__).resolve().parent.parent
PLUGIN_SOURCES = sorted(
    [*(REPO / "plugins").rglob("*.py"), *(REPO / "examples" / "business_hours").rglob("*.py")]
)


def test_every_public_name_is_there_and_listed_once():
    assert len(core.__all__) == len(set(core.__all__))
    missing = [name for name in core.__all__ if not hasattr(core, name)]
    assert missing == []
    for name in ("hookimpl", "Decision", "CallContext", "Ice", "Ace", "Pie", "Dice", "Notify"):
        assert name in core.__all__
    for name in ("ConnectPstn", "Say", "Key", "Migration", "Store", "Tx", "PluginError"):
        assert name in core.__all__


def _core_imports(path: Path) -> list[str]:
    """The core modules a source file imports from, other than ``core`` itself and the
    test kit (``core.testing``, for a package's own tests)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("core."):
            if node.module != "core.testing":
                found.append(f"{path.relative_to(REPO)}: from {node.module} import ...")
        elif isinstance(node, ast.Import):
            found += [
                f"{path.relative_to(REPO)}: import {a.name}"
                for a in node.names
                if a.name.startswith("core.") and a.name != "core.testing"
            ]
    return found


def test_plugins_and_the_example_use_only_the_public_api():
    assert PLUGIN_SOURCES, "no plugin sources found"
    offenders = [line for path in PLUGIN_SOURCES for line in _core_imports(path)]
    assert offenders == []


def test_the_guide_and_the_readme_show_the_public_api():
    for doc in ("README.md", "docs/plugins.md"):
        text = (REPO / doc).read_text()
        assert "from core import " in text
        for module in ("config", "decisions", "hookspecs", "svaml", "store", "events"):
            assert f"from core.{module} import" not in text, (doc, module)


def test_the_contract_depends_only_on_public_types():
    """``core.hookspecs`` resolves its annotations (no cycle through the pipeline) and
    imports nothing above the contract: not the pipeline, the app, the runtime."""
    import typing

    from core import hookspecs
    from core.guide import specs

    for name, spec in specs():
        hints = typing.get_type_hints(spec)
        assert "return" in hints, name
    tree = ast.parse((REPO / "core" / "hookspecs.py").read_text())
    imported = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("core")
    }
    assert imported <= {
        "core.config",
        "core.console.page",  # ConsolePage, ConsoleRequest: types only
        "core.context",
        "core.decisions",
        "core.events",
        "core.store",
        "core.trace",
    }
    assert hookspecs.CallContext is core.CallContext
