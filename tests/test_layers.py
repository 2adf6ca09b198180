"""The layer rule: the core is built in one-way layers, and nothing imports upward.

From the bottom: the protocol (Sinch's events, SVAML, signing), the foundation the
contract stands on (the store, the configuration, logging, metrics), the plugin contract
and the merge, dispatch and the pipeline, the web app, the operator console (its own app
and listener; what a plugin's console page is belongs to the contract), and the server
and command line.
A module may import from its own layer or below, never above, and the core's modules
import each other without cycles. Plugins import only ``core`` (tests/test_public_api.py);
the core never imports a plugin.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

LAYERS: list[tuple[str, set[str]]] = [
    ("protocol", {"core.wire", "core.events", "core.svaml", "core.signing"}),
    (
        "foundation",
        {
            "core.store",
            "core.store.base",
            "core.store.sqlite",
            "core.store.postgres",
            "core.store.shadow",
            "core.config",
            "core.revisions",
            "core.logs",
            "core.metrics",
        },
    ),
    (
        "contract",
        {
            "core.context",
            "core.trace",
            "core.decisions",
            "core.hookspecs",
            "core.plugins",
            # what a plugin's console page is (the rest of core.console is the console layer)
            "core.console.page",
        },
    ),
    (
        "dispatch",
        {
            "core.breaker",
            "core.calls",
            "core.dispatch",
            "core.pipeline",
            "core.replay",
            "core.retry",
            "core.runtime",
        },
    ),
    ("web", {"core.app"}),
    (
        "console",  # the operator console: its own app and listener, above the callbacks' app
        {
            "core.console",
            "core.console.auth",
            "core.console.audit",
            "core.console.sessions",
            "core.console.schema",
            "core.console.health",
            "core.console.html",
            "core.console.views",
            "core.console.policy",
            "core.console.app",
            "core.console.server",
            "core.console.cli",
        },
    ),
    (
        "server",
        {
            "core.server",
            "core.cli",
            "core.cli.main",
            "core.cli.context",
            "core.cli.calls",
            "core.cli.policy",
            "core.cli.commands",
            "core.cli.simulate",
            "core.cli.report",
            "core.cli.cells",
            "core.guide",
            "core.testing",
            "serve",
        },
    ),
]
PUBLIC_API = "core"  # core/__init__.py re-exports the contract and what it stands on
LAYER_OF = {module: i for i, (_, modules) in enumerate(LAYERS) for module in modules}


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def core_sources() -> dict[str, Path]:
    paths = [*sorted((REPO / "core").rglob("*.py")), REPO / "serve.py"]
    return {module_name(p): p for p in paths}


def imports_of(path: Path) -> set[str]:
    """The project modules ``path`` imports at run time (``TYPE_CHECKING`` blocks aside)."""
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from core import wire`` imports the module core.wire, not the public API
            submodules = [f"{node.module}.{a.name}" for a in node.names]
            names = [n for n in submodules if n in core_sources()] or [node.module]
            found.update(n for n in names if n.split(".")[0] in ("core", "plugins"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] in ("core", "plugins"))
    modules = set(core_sources())
    return {m for m in found if m in modules or m.startswith("plugins")}


def test_every_core_module_has_a_layer():
    unplaced = sorted(set(core_sources()) - set(LAYER_OF) - {PUBLIC_API})
    assert unplaced == [], f"place these modules in a layer of tests/test_layers.py: {unplaced}"


def test_nothing_imports_upward():
    upward = []
    for name, path in core_sources().items():
        if name == PUBLIC_API:
            continue
        for target in imports_of(path):
            if target.startswith("plugins"):
                upward.append(f"{name} imports the plugin {target}")
            elif target == PUBLIC_API:
                if LAYER_OF[name] < LAYER_OF["core.plugins"]:
                    upward.append(f"{name} imports the public API from below the contract")
            elif LAYER_OF[target] > LAYER_OF[name]:
                upward.append(
                    f"{name} ({LAYERS[LAYER_OF[name]][0]}) imports {target} "
                    f"({LAYERS[LAYER_OF[target]][0]})"
                )
    assert upward == []


# The one name of the public API from above the contract: the decorator a plugin's
# command (``switchboard_register_commands``) takes the runtime with. Its module imports
# nothing of the core when loaded (click only), so ``import core`` stays one-way.
COMMAND_LINE_CONTRACT = {"core.cli", "core.cli.context"}


def test_the_public_api_re_exports_only_the_contract_and_below():
    above = [
        t
        for t in imports_of(REPO / "core" / "__init__.py")
        if t != PUBLIC_API
        and t not in COMMAND_LINE_CONTRACT
        and LAYER_OF.get(t, 0) > LAYER_OF["core.plugins"]
    ]
    assert above == []
    tree = ast.parse((REPO / "core" / "cli" / "context.py").read_text())
    loaded = [  # module-level imports of core.cli.context: none from the core
        n.module
        for n in tree.body
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("core")
    ]
    assert loaded == []


def test_no_import_cycles_between_core_modules():
    graph = {name: imports_of(path) - {PUBLIC_API, name} for name, path in core_sources().items()}
    # a package imports its own modules (core.store re-exports core.store.base): not a cycle
    for name in graph:
        graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_every_module_says_its_one_job_first():
    sources = [*core_sources().values(), *sorted((REPO / "plugins").rglob("*.py"))]
    missing = []
    for path in sources:
        doc = ast.get_docstring(ast.parse(path.read_text()))
        if path.name == "__init__.py" and path.parent.name == "plugins" and not doc:
            continue  # the namespace of the built-in plugins
        if not doc or not doc.strip().splitlines()[0].strip():
            missing.append(str(path.relative_to(REPO)))
    assert missing == []


def test_the_rule_catches_an_upward_import(tmp_path, monkeypatch):
    """The check itself can fail: an events module importing the pipeline is refused."""
    fake = tmp_path / "core"
    fake.mkdir()
    (fake / "events.py").write_text('"""Events."""\nfrom core.pipeline import Pipeline\n')
    monkeypatch.setattr(
        "tests.test_layers.core_sources",
        lambda: {"core.events": fake / "events.py", "core.pipeline": REPO / "core" / "pipeline.py"},
    )
    with __import__("pytest").raises(AssertionError, match="core.events"):
        test_nothing_imports_upward()
