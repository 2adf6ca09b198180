"""The plugin manager factory: specs, entry points, enabling by config, precedence.

``make_plugins(enabled, shadow=...)`` loads exactly the plugins named in ``enabled``
and ``shadow`` (from the ``switchboard`` entry-point group, or from ``given`` objects in
tests), registers them with a fresh pluggy manager, validates every implementation
against the specs and ends with ``check_pending()``. Anything wrong stops the start
with a ``PluginError`` naming the plugin and the problem. Precedence is the order of
``enabled``, never pluggy's registration order. Shadow plugins (``Plugins.shadow``)
rank after every enabled one and are in neither ``Plugins.order`` nor
``Plugins.impls``: the core calls them apart (``shadow_impls``), for the hooks they
take part in.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import inspect
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pluggy

from core import hookspecs
from core.config import Key, declaration_problem

GROUP = "switchboard"
DISTRIBUTION = "sinch-switchboard"
EVENT_HOOKS = (
    "switchboard_ice",
    "switchboard_ace",
    "switchboard_pie",
    "switchboard_dice",
    "switchboard_notify",
    "switchboard_after_answer",
)

# the hooks a shadow plugin is asked for on live traffic (its observers are not called)
SHADOW_HOOKS = ("switchboard_ice", "switchboard_ace", "switchboard_pie")

log = logging.getLogger("switchboard.plugins")


class PluginError(RuntimeError):
    """A plugin cannot be loaded or is wrong; the message names it."""


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str | None
    builtin: bool
    origin: str
    hooks: tuple[str, ...] = ()
    error: str | None = None
    shadow: bool = False  # loaded from ``plugins.shadow``


@dataclass(frozen=True)
class Impl:
    """One plugin's implementation of one hook, ready to be called by the core."""

    plugin: str
    function: Callable[..., Any]
    argnames: tuple[str, ...]
    hook: str = ""
    traced: bool = False

    def __call__(self, **kwargs: Any) -> Any:
        args = [kwargs[name] for name in self.argnames]
        if not self.traced:
            return self.function(*args)
        shown = ", ".join(f"{n}={_show(n, v)}" for n, v in zip(self.argnames, args, strict=True))
        try:
            result = self.function(*args)
        except BaseException as exc:
            hook_log.info(
                "%s.%s(%s) raised %s: %s", self.plugin, self.hook, shown, type(exc).__name__, exc
            )
            raise
        hook_log.info("%s.%s(%s) -> %r", self.plugin, self.hook, shown, result)
        return result


TRACE_ENV = "SWITCHBOARD_TRACE_HOOKS"
hook_log = logging.getLogger("switchboard.hooks")


def _show(name: str, value: Any) -> str:
    """An argument as the hook trace shows it: settings and config by key names only,
    so that no secret reaches the log."""
    if name in ("settings", "config", "registry", "subparsers", "store"):
        keys = ", ".join(sorted(value)) if isinstance(value, Mapping) else type(value).__name__
        return f"<{keys}>"
    return repr(value)


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def installed_entry_points() -> dict[str, md.EntryPoint]:
    found: dict[str, md.EntryPoint] = {}
    for ep in md.entry_points(group=GROUP):
        found.setdefault(ep.name, ep)
    return found


def _describe_ep(ep: md.EntryPoint) -> tuple[str | None, bool, str]:
    dist = ep.dist
    if dist is None:
        return None, False, f"entry point {ep.value}"
    builtin = _canonical(dist.metadata["Name"] or "") == DISTRIBUTION
    return dist.version, builtin, f"package {dist.metadata['Name']} ({ep.value})"


def _load(name: str, ep: md.EntryPoint) -> object:
    """Import an entry point; a class is instantiated (one instance per manager)."""
    _, _, origin = _describe_ep(ep)
    try:
        obj = ep.load()
    except Exception as exc:  # any import failure stops the start, named
        raise PluginError(
            f"plugin {name!r} from {origin} failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as exc:
            raise PluginError(
                f"plugin {name!r} from {origin} failed to start: {type(exc).__name__}: {exc}"
            ) from exc
    return obj


class Plugins:
    """The enabled plugins, in precedence order, and the shadow plugins, over one pluggy
    manager."""

    def __init__(
        self,
        pm: pluggy.PluginManager,
        order: Sequence[str],
        info: Mapping[str, PluginInfo],
        shadow: Sequence[str] = (),
    ) -> None:
        self.pm = pm
        self.order = tuple(order)
        self.shadow = tuple(shadow)
        self.info = dict(info)
        self._impls: dict[str, tuple[Impl, ...]] = {}
        self._shadow_impls: dict[str, tuple[Impl, ...]] = {}
        self.traced = os.environ.get(TRACE_ENV, "") not in ("", "0")
        if self.traced:
            hook_log.setLevel(logging.INFO)

    def impls(self, hook: str) -> tuple[Impl, ...]:
        """Implementations of ``hook`` by the enabled plugins, in precedence order
        (config order)."""
        cached = self._impls.get(hook)
        if cached is not None:
            return cached
        self._impls[hook] = found = self._collect(hook, self.order)
        return found

    def shadow_impls(self, hook: str) -> tuple[Impl, ...]:
        """Implementations of ``hook`` by the shadow plugins, in ``plugins.shadow`` order."""
        cached = self._shadow_impls.get(hook)
        if cached is not None:
            return cached
        self._shadow_impls[hook] = found = self._collect(hook, self.shadow)
        return found

    def _collect(self, hook: str, names: Sequence[str]) -> tuple[Impl, ...]:
        caller = getattr(self.pm.hook, hook)
        rank = {name: i for i, name in enumerate(names)}
        found = []
        for impl in caller.get_hookimpls():
            name = self.pm.get_name(impl.plugin)
            if name not in rank:
                continue
            found.append(Impl(name, impl.function, tuple(impl.argnames), hook, self.traced))
        found.sort(key=lambda i: rank[i.plugin])
        return tuple(found)

    def call_each(
        self,
        hook: str,
        *,
        configs: Mapping[str, Mapping[str, Any]] | None = None,
        shadow: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Call ``hook`` on every enabled plugin in order (``shadow=True``: on every
        shadow plugin instead); errors name the plugin.

        With ``configs``, each plugin gets its own section as the ``config`` argument.
        """
        results = {}
        for impl in self.shadow_impls(hook) if shadow else self.impls(hook):
            if configs is not None:
                kwargs["config"] = configs.get(impl.plugin, {})
            try:
                results[impl.plugin] = impl(**kwargs)
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin {impl.plugin!r} failed in {hook}: {type(exc).__name__}: {exc}"
                ) from exc
        return results

    def hooks_of(self, name: str) -> tuple[str, ...]:
        plugin = self.pm.get_plugin(name)
        return tuple(sorted(h.name for h in self.pm.get_hookcallers(plugin) or ()))


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


PREFIX = "switchboard_"


def _specs(pm: pluggy.PluginManager) -> dict[str, tuple[str, ...]]:
    """Every hook the contract declares, with its argument names."""
    return {
        name: tuple(caller.spec.argnames)
        for name, caller in vars(pm.hook).items()
        if isinstance(caller, pluggy.HookCaller) and caller.spec is not None
    }


def _did_you_mean(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return f"did you mean {close[0]}?" if close else ""


def _hook_mistakes(pm: pluggy.PluginManager, obj: object) -> list[str]:
    """What is wrong with ``obj``'s hooks, in words for its author: a hook the contract
    does not have (misspelt), a method named like a hook but not marked ``@hookimpl``,
    an argument the hook does not pass."""
    specs = _specs(pm)
    problems = []
    for attr in sorted(dir(obj)):
        if attr.startswith("_"):
            continue
        opts = pm.parse_hookimpl_opts(obj, attr)
        if opts is None:  # not marked @hookimpl
            unmarked = inspect.getattr_static(obj, attr, None)
            if isinstance(unmarked, staticmethod | classmethod):
                unmarked = unmarked.__func__
            if not inspect.isroutine(unmarked):
                continue
            hint = "" if attr in specs else _did_you_mean(attr, specs, cutoff=0.85)
            if attr.startswith(PREFIX) or hint:
                problems.append(
                    f"{attr} is named like a hook but not marked @hookimpl "
                    f"({hint + ' ' if hint else ''}add `from core import hookimpl` "
                    "and decorate it, or rename it)"
                )
            continue
        hook = opts.get("specname") or attr
        if hook not in specs:
            hint = _did_you_mean(hook, specs)
            problems.append(f"{hook} is not a Switchboard hook{f' ({hint})' if hint else ''}")
            continue
        problems.extend(_signature_mistakes(hook, getattr(obj, attr), specs[hook]))
    return problems


def _signature_mistakes(hook: str, function: Any, spec_args: tuple[str, ...]) -> list[str]:
    try:
        params = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return []  # pluggy has the last word on what it cannot inspect
    shown = f"{hook}({', '.join(str(p) for p in params)})"
    takes = f"{hook} takes {', '.join(spec_args) or 'no arguments'}"
    problems = []
    for param in params:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            problems.append(
                f"implements a hook wrongly: {shown}: {param} receives nothing (hooks are "
                f"called by argument name; {takes})"
            )
        elif param.default is param.empty and param.name not in spec_args:
            hint = _did_you_mean(param.name, spec_args)
            problems.append(
                f"implements a hook wrongly: {shown}: {param.name!r} is not an argument of "
                f"the hook ({takes}{'; ' + hint if hint else ''})"
            )
    return problems


def _register(pm: pluggy.PluginManager, name: str, obj: object, origin: str) -> None:
    problems = _hook_mistakes(pm, obj)
    if problems:
        raise PluginError(f"plugin {name!r} from {origin}: {'; '.join(problems)}")
    try:
        pm.register(obj, name=name)
    except pluggy.PluginValidationError as exc:
        detail = str(exc).replace("\n", "; ")
        raise PluginError(
            f"plugin {name!r} from {origin} implements a hook wrongly: {detail}"
        ) from None
    except ValueError as exc:
        raise PluginError(f"plugin {name!r} from {origin} cannot be registered: {exc}") from None
    for caller in pm.get_hookcallers(obj) or ():
        if caller.name in EVENT_HOOKS:
            for impl in caller.get_hookimpls():
                if impl.plugin is obj and (impl.hookwrapper or impl.wrapper):
                    raise PluginError(
                        f"plugin {name!r} from {origin}: {caller.name} may not be a wrapper "
                        "(the core calls each plugin itself, in config order)"
                    )


def make_plugins(
    enabled: Sequence[str],
    *,
    shadow: Sequence[str] = (),
    load_entrypoints: bool = True,
    given: Mapping[str, object] | None = None,
) -> Plugins:
    """Build the manager holding exactly the ``enabled`` and ``shadow`` plugins.

    ``given`` maps names to plugin objects that take precedence over entry points (for
    tests and embedding); with ``load_entrypoints=False`` only ``given`` is used.
    """
    given = dict(given or {})
    pm = _new_manager()
    eps = installed_entry_points() if load_entrypoints else {}
    info: dict[str, PluginInfo] = {}
    shadowed = set(shadow)
    for name in (*enabled, *shadow):
        if name in given:
            obj, version, builtin, origin = (
                given[name],
                None,
                False,
                f"object {_qualname(given[name])}",
            )
        elif name in eps:
            version, builtin, origin = _describe_ep(eps[name])
            obj = _load(name, eps[name])
        else:
            known = ", ".join(sorted(set(eps) | set(given))) or "none"
            listed = "in plugins.shadow" if name in shadowed else "enabled"
            raise PluginError(
                f"plugin {name!r} is {listed} in config.toml but not installed "
                f"(entry-point group {GROUP!r}; installed: {known})"
            )
        _register(pm, name, obj, origin)
        info[name] = PluginInfo(name, version, builtin, origin, shadow=name in shadowed)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        plugin_name = pm.get_name(exc.plugin) if exc.plugin is not None else "?"
        raise PluginError(f"plugin {plugin_name!r}: {exc}") from None
    plugins = Plugins(pm, enabled, info, shadow)
    for name in (*enabled, *shadow):
        info[name] = PluginInfo(**{**info[name].__dict__, "hooks": plugins.hooks_of(name)})
        if name in shadowed and not set(info[name].hooks) & set(SHADOW_HOOKS):
            raise PluginError(
                f"plugin {name!r} from {info[name].origin} is in plugins.shadow but implements "
                f"none of {', '.join(SHADOW_HOOKS)}: in shadow it would decide nothing"
            )
    plugins.info = info
    return plugins


def _qualname(obj: object) -> str:
    if inspect.ismodule(obj):
        return obj.__name__
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def list_installed(enabled: Iterable[str] = ()) -> list[PluginInfo]:
    """Every plugin installed in the entry-point group, loaded to list its hooks."""
    out = []
    for name, ep in sorted(installed_entry_points().items()):
        version, builtin, origin = _describe_ep(ep)
        try:
            obj = _load(name, ep)
            pm = _new_manager()
            _register(pm, name, obj, origin)
            hooks = tuple(sorted(h.name for h in pm.get_hookcallers(obj) or ()))
            out.append(PluginInfo(name, version, builtin, origin, hooks))
        except PluginError as exc:
            out.append(PluginInfo(name, version, builtin, origin, error=str(exc)))
    return out


def declared_keys(plugins: Plugins) -> dict[str, Mapping[str, Key]]:
    """The config keys each enabled or shadow plugin declares (``switchboard_config_keys``)."""
    out: dict[str, Mapping[str, Key]] = {}
    declared = {
        **plugins.call_each("switchboard_config_keys"),
        **plugins.call_each("switchboard_config_keys", shadow=True),
    }
    for name, keys in declared.items():
        if keys is None:
            continue
        origin = plugins.info[name].origin
        if not isinstance(keys, Mapping):
            raise PluginError(
                f"plugin {name!r} from {origin}: switchboard_config_keys must return a mapping of Key"
            )
        for key, spec in keys.items():
            problem = declaration_problem(key, spec)
            if problem is not None:
                raise PluginError(f"plugin {name!r} from {origin}: {problem}")
        out[name] = keys
    return out
