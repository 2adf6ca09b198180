"""Prometheus metrics, one registry per runtime (served at ``GET /metrics``).

Every name starts with ``switchboard_``. Plugins add their own collectors through the
``switchboard_metrics(registry)`` hook (the credit plugin reports open reservations,
the crm plugin its outbox depth and dead letters).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from core.store import Store

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
FALLBACK_RULES = frozenset(
    {
        "budget",
        "invalid-answer",
        "callbacks-suppressed",
        "internal-error",
        "duplicate-in-flight",
        "store-unavailable",
    }
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        r = self.registry
        self.callbacks = Counter(
            "switchboard_callbacks_total",
            "Callbacks answered, by event and outcome (the answer's action, "
            "ok for DiCE/Notify, duplicate, or rejected)",
            ["event", "outcome"],
            registry=r,
        )
        self.decisions = Counter(
            "switchboard_decisions_total",
            "Decided callbacks by the merge rule that settled them "
            "(deny, proposal, allow-default, event-default, cap-unenforceable, budget, "
            "invalid-answer, callbacks-suppressed, ...)",
            ["event", "rule"],
            registry=r,
        )
        self.denials = Counter(
            "switchboard_denials_total",
            "Denies, by the plugin that denied",
            ["event", "plugin"],
            registry=r,
        )
        self.caps = Counter(
            "switchboard_caps_total",
            "Answers whose maxDuration a plugin lowered",
            ["event", "plugin"],
            registry=r,
        )
        self.latency = Histogram(
            "switchboard_answer_seconds",
            "Time from request to answer",
            ["event"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.plugin_latency = Histogram(
            "switchboard_plugin_seconds",
            "Time a plugin's hook took",
            ["plugin", "event"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.plugin_errors = Counter(
            "switchboard_plugin_errors_total",
            "Plugin hooks that raised, returned garbage or overran",
            ["plugin", "event", "kind"],
            registry=r,
        )
        self.conflicts = Counter(
            "switchboard_conflicts_total",
            "Proposals that lost to a higher-precedence plugin",
            ["event"],
            registry=r,
        )
        self.fallbacks = Counter(
            "switchboard_fallbacks_total",
            "Answers replaced by the configured fallback, by reason",
            ["event", "reason"],
            registry=r,
        )
        self.rejected = Counter(
            "switchboard_rejected_total",
            "Requests refused before any plugin ran, by HTTP status",
            ["status"],
            registry=r,
        )
        self.signature_failures = Counter(
            "switchboard_signature_failures_total",
            "Callbacks whose signature failed, by reason",
            ["reason"],
            registry=r,
        )

        self.retries = Counter(
            "switchboard_callback_retries_total",
            "Retries of the plugins' work on a received DiCE or Notify, by how they ended "
            "(done, retry: failed again, parked: given up for an operator)",
            ["event", "outcome"],
            registry=r,
        )
        self.shadow_decisions = Counter(
            "switchboard_shadow_decisions_total",
            "Decision hooks of shadow plugins (plugins.shadow), by effect: changed (its "
            "decision, merged after the enabled plugins', would have changed the answer), "
            "same (it would not, or it had no opinion), failed (it raised, overran or was "
            "not run)",
            ["plugin", "event", "effect"],
            registry=r,
        )
        self.breaker_trips = Counter(
            "switchboard_breaker_trips_total",
            "Times a plugin's circuit breaker opened after repeated timeouts",
            ["plugin"],
            registry=r,
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: prometheus_client validates and
        locks on every ``labels()`` call, and each callback counts several times. The
        label values come from bounded sets (events, plugins, rules, actions)."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found


class StoreGauges:
    """Gauges read from the store at scrape time: ``sql`` returns one row, one number per
    gauge, in the order of ``gauges`` (``(name, help)`` pairs). While the store does not
    answer, the gauges are left out rather than the page failing. Register one with
    ``registry.register(StoreGauges(store, sql, ...))`` in ``switchboard_metrics``."""

    def __init__(self, store: Store, sql: str, *gauges: tuple[str, str]) -> None:
        self.store, self.sql, self.gauges = store, sql, gauges

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(name, text) for name, text in self.gauges]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            row = self.store.query(self.sql)[0]
        except Exception:  # noqa: BLE001 - the store is down: no figure rather than no page
            return
        for (name, text), value in zip(self.gauges, row, strict=True):
            yield GaugeMetricFamily(name, text, value=int(value or 0))
