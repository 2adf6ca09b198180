"""Everything a running Switchboard holds: settings, plugins, store, pipeline.

``Runtime.build(settings)`` loads the enabled plugins, validates their config sections
and opens the store; ``start()`` applies migrations and runs the plugins' start-up
hooks; ``close()`` shuts them down and closes the store. Factories, not globals: tests
build as many runtimes as they like, each with exactly the plugins they name.

Shadow plugins (``plugins.shadow``) are loaded, configured, migrated, started and shut
down like enabled ones, but their start-up hook gets ``shadow_store`` (a
``core.store.ShadowStore``: real reads, writes rolled back), as their decision hooks
do; their other hooks (observers, metrics, commands, console pages, call details) are
not called.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime

from core import revisions
from core.config import ConfigError, Settings, with_plugins
from core.metrics import Metrics
from core.pipeline import Pipeline
from core.plugins import PluginError, Plugins, declared_keys, make_plugins
from core.retry import Retrier, waiting_gauges
from core.store import CORE_MIGRATIONS, Migration, ShadowStore, Store, open_store

log = logging.getLogger("switchboard")


def _check_fallbacks(settings: Settings, plugins: Plugins) -> None:
    """A fallback is sent without the merge's checks, so it must not suppress callbacks
    while a plugin relies on the DiCE (the merge refuses that from plugins)."""
    relying = [impl.plugin for impl in plugins.impls("switchboard_dice")]
    if settings.policy["allow_suppress_callbacks"] or not relying:
        return
    for event, svaml in settings.fallback.items():
        if getattr(svaml.action, "suppress_callbacks", None) is True:
            raise ConfigError(
                f"policy.fallback.{event}: suppressCallbacks would leave calls unsettled and "
                f"unrecorded ({', '.join(relying)} rely on the DiCE); set "
                "policy.allow_suppress_callbacks = true to allow it"
            )


class Runtime:
    def __init__(
        self,
        settings: Settings,
        plugins: Plugins,
        store: Store,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.plugins = plugins
        self.store = store
        self.shadow_store = ShadowStore(store)  # what shadow plugins get as their store
        self.clock = clock
        self.pipeline: Pipeline | None = None
        self.retrier: Retrier | None = None
        self.metrics = Metrics()
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        self._close_store_on_retire = True
        self._migrations: dict[str, list[Migration]] | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        given: Mapping[str, object] | None = None,
        load_entrypoints: bool = True,
        plugins: Plugins | None = None,
        store: Store | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> Runtime:
        """Load plugins (unless ``plugins`` are given already loaded), validate their
        settings, let them configure, open the store."""
        if plugins is None:
            plugins = make_plugins(
                settings.enabled,
                shadow=settings.shadow,
                load_entrypoints=load_entrypoints,
                given=given,
            )
        settings = with_plugins(settings, declared_keys(plugins))
        _check_fallbacks(settings, plugins)
        configure_errors: list[str] = []
        hook = "switchboard_configure"
        for impl in (*plugins.impls(hook), *plugins.shadow_impls(hook)):
            try:
                impl(settings=settings, config=settings.plugins.get(impl.plugin, {}))
            except ValueError as exc:
                configure_errors.append(f"plugin {impl.plugin!r} refused its configuration: {exc}")
        if configure_errors:
            raise PluginError("; ".join(configure_errors))
        if store is None:
            store = open_store(
                settings.store["url"],
                settings.base_dir,
                pool_size=settings.store["pool_size"],
                sqlite_synchronous=settings.store["sqlite_synchronous"],
                inspect_timeout=settings.store["inspect_timeout"],
            )
        return cls(settings, plugins, store, clock=clock)

    def migrations(self) -> dict[str, list[Migration]]:
        """Every owner's migrations: the core's and each enabled or shadow plugin's (asked
        once; a shadow plugin's tables are made in the real store, so that its reads work)."""
        if self._migrations is not None:
            return self._migrations
        out: dict[str, list[Migration]] = {"core": list(CORE_MIGRATIONS)}
        hook = "switchboard_store_migrations"
        declared = {
            **self.plugins.call_each(hook),
            **self.plugins.call_each(hook, shadow=True),
        }
        for name, items in declared.items():
            items = list(items or ())
            if not all(isinstance(m, Migration) for m in items):
                raise PluginError(
                    f"plugin {name!r}: switchboard_store_migrations must return Migration objects"
                )
            out[name] = items
        self._migrations = out
        return out

    def pending_migrations(self) -> dict[str, list[int]]:
        pending = {
            owner: [m.version for m in self.store.pending(owner, items)]
            for owner, items in self.migrations().items()
        }
        return {owner: versions for owner, versions in pending.items() if versions}

    def start(self, *, serving: bool = True, how: str = "start") -> Pipeline:
        """Apply migrations, run start-up hooks, and return the callback pipeline.

        ``serving=False`` for commands that use the store but serve no callbacks. A
        serving runtime records its configuration revision as loaded (``how``: at the
        server's ``start`` or by a ``reload``; see ``core.revisions``).
        """
        if self.pipeline is not None:
            return self.pipeline
        for owner, items in self.migrations().items():
            applied = self.store.migrate(owner, items)
            if applied:
                log.info("applied %s migrations %s", owner, applied)
        self.plugins.call_each(
            "switchboard_startup", configs=self.settings.plugins, store=self.store, serving=serving
        )
        self.plugins.call_each(
            "switchboard_startup",
            configs=self.settings.plugins,
            shadow=True,
            store=self.shadow_store,
            serving=serving,
        )
        if serving:
            self.plugins.call_each("switchboard_metrics", registry=self.metrics.registry)
        self.pipeline = Pipeline(
            self.settings, self.plugins, self.store, clock=self.clock, metrics=self.metrics
        )
        if serving:
            revisions.record(
                self.store, self.pipeline.revision, revisions.policy_content(self.settings), how
            )
            self.metrics.registry.register(waiting_gauges(self.store))
            self.retrier = Retrier(self.pipeline)
            self.retrier.start()
        if self.settings.sinch["insecure"]:
            log.warning(
                "INSECURE: callback signatures are NOT verified (sinch.insecure = true); "
                "anyone who can reach this server can place and end calls"
            )
        return self.pipeline

    # ---------------------------------------------------------------- in-flight count

    def enter(self) -> None:
        with self._inflight_lock:
            self._inflight += 1

    def leave(self) -> None:
        with self._inflight_lock:
            self._inflight -= 1

    @property
    def inflight(self) -> int:
        return self._inflight

    def retire(self, *, close_store: bool) -> None:
        """A reload replaced this runtime: it finishes what is in flight, then
        ``close_retired()`` shuts it down (its store too, unless the new one shares it)."""
        self._close_store_on_retire = close_store

    def close_retired(self) -> None:
        self.close(close_store=self._close_store_on_retire)

    def close(self, *, close_store: bool = True) -> None:
        """Stop plugins, the worker pool and (unless told not to) the store; idempotent."""
        if self.retrier is not None:
            self.retrier.stop()
            self.retrier = None
        if self.pipeline is not None:
            self.pipeline.wait_idle()
            hook = "switchboard_shutdown"
            for impl in (*self.plugins.impls(hook), *self.plugins.shadow_impls(hook)):
                try:
                    impl()
                except Exception:
                    log.exception("plugin %r failed in switchboard_shutdown", impl.plugin)
            self.pipeline.close()
            self.pipeline = None
        if close_store:
            self.store.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
