"""The running server's own figures for the console: each plugin's errors, timeouts and
circuit breaker, and the configuration (when it was loaded, whether the last reload
was refused, which store).

They come from this process's memory (the runtime's metrics and breakers), not the
store: nothing here costs the callbacks a query. Counters restart at a reload, as
``/metrics`` says.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from core.runtime import Runtime
from core.store import redact_url


class Host(Protocol):
    """What the console reads from the server it runs in (``core.server.Switch``): the
    runtime serving callbacks now (a reload replaces it), when its configuration was
    loaded, and the last refused reload (when, why) since then, if any."""

    @property
    def runtime(self) -> Runtime: ...

    @property
    def loaded_at(self) -> float: ...

    @property
    def refused(self) -> tuple[float, str] | None: ...


class Fixed:
    """A host that serves one runtime (the in-process tests, a console without reloads)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.loaded_at = time.time()
        self.refused: tuple[float, str] | None = None


@dataclass(frozen=True)
class PluginHealth:
    plugin: str
    problems: Mapping[str, int]  # trace status (error, timeout, saturated...) -> count
    breaker_open_for: float | None  # seconds left, when its circuit breaker is open
    breaker_trips: int

    @property
    def healthy(self) -> bool:
        return not self.problems and self.breaker_open_for is None


def _samples(metric: Any) -> list[tuple[Mapping[str, str], float]]:
    return [
        (s.labels, s.value)
        for family in metric.collect()
        for s in family.samples
        if s.name.endswith("_total")
    ]


def plugins(runtime: Runtime) -> list[PluginHealth]:
    """Every enabled plugin, in precedence order, then every shadow plugin."""
    names = (*runtime.plugins.order, *runtime.plugins.shadow)
    problems: dict[str, dict[str, int]] = {name: {} for name in names}
    for labels, value in _samples(runtime.metrics.plugin_errors):
        kinds = problems.setdefault(labels["plugin"], {})
        kinds[labels["kind"]] = kinds.get(labels["kind"], 0) + int(value)
    trips = {labels["plugin"]: int(v) for labels, v in _samples(runtime.metrics.breaker_trips)}
    pipeline = runtime.pipeline
    now = time.monotonic()
    out = []
    for name in names:
        open_for = None
        if pipeline is not None and pipeline.breaker.is_open(name, now):
            open_for = pipeline.breaker.left(name, now)
        found = {k: n for k, n in problems.get(name, {}).items() if n}
        out.append(PluginHealth(name, found, open_for, trips.get(name, 0)))
    return out


@dataclass(frozen=True)
class Configuration:
    path: str
    loaded_at: float
    refused: tuple[float, str] | None
    plugins: tuple[str, ...]
    store: str  # backend and URL, the password removed
    shadow: tuple[str, ...] = ()  # the plugins in shadow


def configuration(host: Host) -> Configuration:
    runtime = host.runtime
    settings = runtime.settings
    return Configuration(
        path=str(settings.path) if settings.path else "(built in)",
        loaded_at=host.loaded_at,
        refused=host.refused,
        plugins=runtime.plugins.order,
        store=f"{runtime.store.backend}: {redact_url(settings.store['url'])}",
        shadow=runtime.plugins.shadow,
    )
