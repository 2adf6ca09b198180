"""One callback from raw request to answer: verify, parse, dedupe, dispatch, merge,
validate, record, log.

Failure has a defined outcome:

* A plugin that raises, returns something other than a ``Decision``/``None``, or runs
  past its own ``timeout`` is handled by its ``on_error``: ``deny`` (default for the
  decision hooks) or ``abstain``. The others' decisions still merge.
* ``policy.budget`` bounds every ICE/ACE/PIE: if plugins are still running when it
  is about to pass, or the merged answer is illegal, the configured fallback is sent.
  A plugin's default ``timeout`` is three quarters of the budget, so one slow plugin
  is cut off and merged by its ``on_error`` before the fallback is needed.
* Duplicates: each callback is claimed in the store under ``(callid, event, sub)``
  (``sub`` is empty for ICE/ACE/DiCE, of which a call has one each, and a digest of
  the body for PIE and Notify, of which a call may have several). A repeat is answered
  with the stored answer and reaches no decision or observer hook.

Shadow plugins (``plugins.shadow``) are asked for ICE, ACE and PIE with the enabled
ones, in the same dispatch (same timeout, breaker and saturation limit), with a
``core.store.ShadowStore`` as ``ctx.store``. Their results are traced (``shadow``) and
never merged: a failure applies no ``on_error`` and never makes the budget fallback.
Each one's decision is merged, for comparison only, as if ranked after every enabled
plugin; whether that would have changed the answer is traced and counted
(``switchboard_shadow_decisions_total``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from core.breaker import Breaker
from core.dispatch import Call, Running, dispatch
from core.context import CallContext
from core.config import PluginConfig, Settings
from core.decisions import Decision, Outcome, merge
from core.events import DECISION_EVENTS, Dice, Event, EventError, Ice, excerpt, parse_event
from core.logs import CALLID
from core.metrics import FALLBACK_RULES, Metrics
from core.plugins import Impl, Plugins
from core.revisions import revision_for
from core.signing import SignatureError, Verifier
from core.store import Claim, Received, ShadowStore, Store, Summary, Waiting
from core.svaml import Svaml, SvamlError, dumps
from core.trace import PluginResult, Trace, frozen

log = logging.getLogger("switchboard.callback")

# how one plugin's hook for one event is called: implementation, settings, on_error,
# timeout, logger (``Pipeline._plan``)
Plan = tuple[Impl, PluginConfig, str, float, logging.Logger]

DEFAULT_TIMEOUT_SHARE = 0.75  # of the budget, for plugins without their own timeout
SLOW_OBSERVER = 0.02  # seconds an after-answer observer may take before it is moved to the pool
MERGE_RESERVE = 0.05  # of the budget, kept for merging, storing and sending
POLL_INTERVAL = 0.01
LEASE_MARGIN = 2.0  # seconds a claim outlives the budget
QUEUED_LIMIT = 0.5  # of the budget: a decision callback queued longer gets the fallback
UNRECORDED_LIMIT = 1000  # fallbacks kept in memory until the store can record them


@dataclass
class Response:
    """What the web layer sends back. ``after``, when set, runs the after-answer
    observers: the web layer calls it once the answer has been sent."""

    status: int
    body: str = ""
    after: Callable[[], None] | None = None


def error_body(message: str, field_name: str | None = None) -> str:
    """``{"error": ..., "field": ...}``, each bounded whatever the input quoted in it."""
    out = {"error": excerpt(message, 300)}
    if field_name:
        out["field"] = excerpt(field_name, 120)
    return json.dumps(out)


class Pipeline:
    """Handles verified callbacks. Build one per app; it owns the hook worker pool."""

    def __init__(
        self,
        settings: Settings,
        plugins: Plugins,
        store: Store,
        *,
        clock: Callable[[], datetime] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.settings = settings
        self.plugins = plugins
        self.store = store
        self.budget: float = settings.policy["budget"]
        self.revision = revision_for(settings)  # named by every trace
        self.call_clock: Callable[[], float] = time.time  # CallContext.now (see replay)
        self.ice_default: str = settings.policy["ice_default"]
        # plugins relying on the DiCE: the merge refuses an answer suppressing callbacks
        self.needs_dice: tuple[str, ...] = (
            ()
            if settings.policy["allow_suppress_callbacks"]
            else tuple(impl.plugin for impl in plugins.impls("switchboard_dice"))
        )
        # how long a claim protects a callback being processed: every wait of the
        # processing ends by the budget, so a claim still held after this is a worker
        # that died; a redelivery (or the retry worker) then processes the callback
        self.lease = self.budget + LEASE_MARGIN
        self.fallback: Mapping[str, Svaml] = settings.fallback
        prefix = settings.server["public_path_prefix"]
        self.signed_path = prefix + settings.server["callback_path"]
        self.verifier: Verifier | None = None
        if not settings.sinch["insecure"]:
            self.verifier = Verifier(
                settings.credentials, window=settings.sinch["timestamp_window"] or None, clock=clock
            )
        self.executor = ThreadPoolExecutor(
            max_workers=settings.policy["workers"], thread_name_prefix="switchboard-hook"
        )
        self._plugin_logs = {
            name: logging.getLogger(f"switchboard.plugin.{name}")
            for name in (*plugins.order, *plugins.shadow)
        }
        self._pending_after: set[Future[Any]] = set()
        # fallbacks sent while the store could not record them (``_record_fallback``)
        self._unrecorded: deque[tuple[Event, str, bytes, str, Trace, float]] = deque(
            maxlen=UNRECORDED_LIMIT
        )
        self._slow_observers: set[str] = set()  # plugins whose after-answer runs in the pool
        self._rank = {name: i for i, name in enumerate(plugins.order)}
        self._plans = {name: self._plan(name) for name in (*DECISION_EVENTS, "dice", "notify")}
        # the shadow plugins' decision hooks (none: no event has any), and their store
        self._shadow_plans = {
            name: plans
            for name in DECISION_EVENTS
            if (plans := self._plan(name, self.plugins.shadow_impls))
        }
        self.shadow_store = ShadowStore(store)
        self._running = Running(max(1, settings.policy["workers"] // 2))
        policy = settings.policy
        self.breaker = Breaker(
            policy["breaker_timeouts"], policy["breaker_window"], policy["breaker_cooldown"]
        )

    # ------------------------------------------------------------------ entry

    def handle(
        self,
        method: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        received: float | None = None,
    ) -> Response:
        """Answer one callback. ``received`` (``time.monotonic()``) is when the HTTP server
        had the whole request, if it says: an ICE/ACE/PIE's budget counts from then, so
        time spent queued for a free thread is part of it, as it is for the client."""
        started = time.monotonic()
        if self.verifier is not None:
            try:
                self.verifier.verify(method, self.signed_path, headers, body)
            except SignatureError as exc:
                return self._reject(started, 401, exc.message, reason=exc.reason)
        try:
            event = parse_event(body)
        except EventError as exc:
            return self._reject(started, 400, str(exc), field_name=exc.field)
        sub = hashlib.sha256(body).hexdigest()[:32] if event.name in ("pie", "notify") else ""
        bound = CALLID.set(event.callid or None)  # the core's log lines name the call
        try:
            if event.name in DECISION_EVENTS:
                if received is not None and started - self.budget * 4 < received < started:
                    started = received
                return self._decide(event, sub, started, body)
            return self._observe(event, sub, started, body)
        except Exception as exc:
            store_down = isinstance(exc, self.store.errors)
            if store_down:
                log.error(
                    "store unavailable on %s for call %s: %s", event.name, event.callid, exc
                )
            else:
                log.exception("internal error on %s for call %s", event.name, event.callid)
            if event.name in DECISION_EVENTS:  # an answer Sinch can obey beats an error
                rule = "store-unavailable" if store_down else "internal-error"
                return self._fallback(
                    event, self._new_trace(event), started, unrecorded=(sub, body), rule=rule
                )
            # a DiCE or Notify that is not safely stored is never answered 200
            self.count_reject(503)
            return Response(503, error_body("the callback could not be stored; send it again"))
        finally:
            CALLID.reset(bound)

    def close(self) -> None:
        """Stop the worker pool (call wait_idle first; a hung plugin is not waited for)."""
        self.executor.shutdown(wait=False, cancel_futures=True)

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait for pending after-answer observers (tests, shutdown)."""
        end = time.monotonic() + timeout
        while self._pending_after and time.monotonic() < end:
            for fut in list(self._pending_after):
                try:
                    fut.result(timeout=max(0.0, end - time.monotonic()))
                except Exception:  # noqa: BLE001, S110 - logged where it ran
                    pass

    # ------------------------------------------------------------------ decisions

    def _decide(self, event: Event, sub: str, started: float, raw: bytes) -> Response:
        deadline = started + self.budget
        cutoff = deadline - self.budget * MERGE_RESERVE
        trace = self._new_trace(event)
        queued = time.monotonic() - started
        if queued > self.budget * QUEUED_LIMIT:  # too late to ask the plugins: answer now
            trace["notes"].append(f"waited {queued:.3f} s for a server thread")
            return self._fallback(event, trace, started, unrecorded=(sub, raw), rule="budget")
        with self.store.until(cutoff):  # a store that cannot answer in time: the fallback
            claim = self._claim_decision(event, sub, raw)
        if claim.status == "done":
            return self._duplicate(event, claim.answer, trace, started)
        if claim.status == "busy":
            stored = self._wait_for_answer(event, sub, cutoff)
            if stored is not None:
                return self._duplicate(event, stored, trace, started)
            return self._fallback(
                event, trace, started, rule="duplicate-in-flight", duplicate=True
            )

        try:
            answer = self._decided(event, deadline, trace)
            body = dumps(answer)
            sealed = self._seal(trace, started, answer)
            with self.store.until(deadline):
                self._finish(event, sub, body, sealed, claim.attempts)
        except Exception:
            try:
                with self.store.until(deadline):
                    self.store.release(event.callid, event.name, sub)
            except Exception:  # noqa: BLE001 - its lease runs out instead
                log.warning("could not release the claim of %s %s", event.name, event.callid)
            raise
        return self._respond(event, body, sealed, started)

    def _claim_decision(
        self,
        event: Event,
        sub: str,
        raw: bytes,
        *,
        redelivery: bool = True,
        now: float | None = None,
    ) -> Claim:
        """Claim an ICE, ACE or PIE, its body kept for replays (``core.replay``) without a
        flush of its own: lost in a power cut, a redelivery is processed again. ``now``:
        when it arrived, if that was not just now."""
        return self.store.claim(
            event.callid,
            event.name,
            sub,
            lease=self.lease,
            now=now,
            body=raw.decode(),
            received=arrival(event),
            redelivery=redelivery,
            durable=False,
        )

    def _decided(self, event: Event, deadline: float, trace: dict[str, Any]) -> dict[str, Any]:
        """Ask the plugins and merge their decisions into the answer (the fallback when a
        plugin was still running at the budget); the shadow plugins' effects go into the
        trace."""
        results = self._run_hooks(event, deadline, trace, decision=True)
        if results is None:
            svaml = self.fallback[event.name]
            trace.update(
                rule="budget", notes=trace["notes"] + ["plugins still running at the budget"]
            )
        else:
            svaml = self._merge(event, results, trace).svaml
        answer = svaml.to_dict()
        if "shadowed" in trace:
            self._shadow_effects(event, results, trace, answer)
        return answer

    def _fallback(
        self,
        event: Event,
        trace: dict[str, Any],
        started: float,
        unrecorded: tuple[str, bytes] | None = None,
        **why: Any,
    ) -> Response:
        """Answer a decision callback with the configured fallback; ``why`` goes into the
        trace (``rule``, ``duplicate``). ``unrecorded``: the callback's ``(sub, body)``
        when it was answered before its claim was recorded (queued too long, the store
        failing): it is recorded once the answer is sent (``_record_fallback``)."""
        svaml = self.fallback[event.name]
        trace.update(why)
        sealed = self._seal(trace, started, svaml.to_dict())
        answer = svaml.to_json()
        response = self._respond(event, answer, sealed, started)
        if unrecorded is not None:
            sub, raw = unrecorded
            observers = response.after
            arrived = time.time() - (time.monotonic() - started)  # recorded as received then

            def after() -> None:
                self._record_fallback(event, sub, raw, answer, sealed, arrived)
                if observers is not None:
                    observers()

            response.after = after
        return response

    def _record_fallback(
        self, event: Event, sub: str, raw: bytes, answer: str, trace: Trace, arrived: float
    ) -> None:
        """Record a fallback answered without a claim, after it was sent, so that the
        calls view (and a replay) has it: unless the callback was recorded meanwhile (a
        redelivery processed it). If the store still cannot take it, it waits in memory
        (the latest ``UNRECORDED_LIMIT``) for the retry worker (``record_fallbacks``)."""
        if not self._try_record(event, sub, raw, answer, trace, arrived):
            self._unrecorded.append((event, sub, raw, answer, trace, arrived))

    def record_fallbacks(self) -> int:
        """Record the fallbacks the store could not take when they were sent, now that
        it may (the retry worker calls this); returns how many were recorded."""
        done = 0
        while self._unrecorded:
            item = self._unrecorded.popleft()
            if not self._try_record(*item):
                self._unrecorded.appendleft(item)
                break
            done += 1
        return done

    def _try_record(
        self, event: Event, sub: str, raw: bytes, answer: str, trace: Trace, arrived: float
    ) -> bool:
        try:
            with self.store.until(time.monotonic() + self.budget / 2):
                claim = self._claim_decision(event, sub, raw, redelivery=False, now=arrived)
                if claim.status == "new":
                    try:
                        self._finish(event, sub, answer, trace, claim.attempts)
                    except Exception:
                        self.store.release(event.callid, event.name, sub)  # tried again
                        raise
        except Exception as exc:  # noqa: BLE001 - the answer is sent; recorded later
            log.warning(
                "the fallback answer to %s of call %s is not recorded yet: %s",
                event.name,
                event.callid,
                exc,
            )
            return False
        return True

    def _merge(
        self, event: Event, results: list[tuple[str, Decision | None]], trace: dict[str, Any]
    ) -> Outcome:
        outcome = self._outcome(event, results)
        trace.update(
            rule=outcome.rule,
            capped_by=outcome.capped_by,
            decided_by=outcome.decided_by,
            conflicts=outcome.conflicts,
            notes=trace["notes"] + outcome.notes,
        )
        return outcome

    def _outcome(self, event: Event, results: list[tuple[str, Decision | None]]) -> Outcome:
        """The merge of ``results``, checked: the answer to send, or the fallback."""
        try:
            outcome = merge(
                event.name, results, ice_default=self.ice_default, needs_callbacks=self.needs_dice
            )
            outcome.svaml.validate_for(event.name)
        except SvamlError as exc:  # RefusedAnswer names its own rule
            outcome = Outcome(
                self.fallback[event.name],
                getattr(exc, "rule", "invalid-answer"),
                notes=[f"merged answer rejected: {exc}"],
            )
        return outcome

    def _shadow_effects(
        self,
        event: Event,
        results: list[tuple[str, Decision | None]] | None,
        trace: dict[str, Any],
        answer: dict[str, Any],
    ) -> None:
        """Whether each shadow plugin's decision (``trace["shadowed"]``, from
        ``_run_hooks``) would have changed ``answer``: the enabled plugins' ``results``
        merged with it ranked last, checked as the real merge is, against the answer
        sent. With ``results`` None (the budget fallback) the answer would have been the
        same. Traced on its entry (``would_change``, and ``would_answer``: the action and
        its ``maxDuration``) and counted."""
        counter = self.metrics.shadow_decisions
        for entry, decided in trace.pop("shadowed"):
            plugin = entry["plugin"]
            would = answer
            try:
                if decided is not None and results is not None:
                    would = self._outcome(event, [*results, (plugin, decided)]).svaml.to_dict()
            except Exception as exc:  # noqa: BLE001 - the real answer stands whatever happens
                entry["error"] = f"its decision could not be merged: {type(exc).__name__}: {exc}"
                self._plugin_logs.get(plugin, log).exception(
                    "%s for call %s: merging the shadow decision failed", event.name, event.callid
                )
                self.metrics.child(counter, plugin, event.name, "failed").inc()
                continue
            changed = would != answer
            entry["would_change"] = changed
            if changed:
                action = would["action"]
                entry["would_answer"] = {"action": action["name"]}
                if "maxDuration" in action:
                    entry["would_answer"]["maxDuration"] = action["maxDuration"]
            effect = "changed" if changed else "same"
            self.metrics.child(counter, plugin, event.name, effect).inc()

    def _wait_for_answer(self, event: Event, sub: str, until: float) -> str | None:
        with self.store.until(until):
            while time.monotonic() < until:
                answer = self.store.answer_of(event.callid, event.name, sub)
                if answer is not None:
                    return answer
                time.sleep(POLL_INTERVAL)
        return None

    def _duplicate(
        self, event: Event, answer: str | None, trace: dict[str, Any], started: float
    ) -> Response:
        trace.update(rule="duplicate", duplicate=True)
        sealed = self._seal(trace, started, json.loads(answer) if answer else None)
        return self._respond(event, answer or "", sealed, started)

    # ------------------------------------------------------------------ observers

    def _observe(self, event: Event, sub: str, started: float, body: bytes) -> Response:
        """DiCE and Notify: record the verified body durably, then run the plugins' work
        from it. The answer is 200 once the body is on disk, whatever the plugins do:
        work that fails is retried (``retry``) until it succeeds or is parked. If the
        body cannot be stored, the answer is 503 and Sinch's redelivery is processed."""
        deadline = started + self.budget
        trace = self._new_trace(event)
        text = body.decode()  # parse_event checked it is UTF-8
        with self.store.deferred_flush() as mine:
            with self.store.until(deadline):
                claim = self.store.claim(
                    event.callid,
                    event.name,
                    sub,
                    lease=self.lease,
                    body=text,
                    received=arrival(event),
                )
                if claim.status == "busy":  # processed elsewhere now: wait, or take it over
                    claim = self._wait_for_claim(event, sub, text, deadline)
            if claim.status == "new":
                _, sealed = self._work(event, sub, trace, claim, deadline, started)
            else:
                trace.update(rule="duplicate", duplicate=True)
                sealed = self._seal(trace, started)
        self.store.flush(mine.seq)
        if sealed.duplicate:  # what another worker stored must be on disk too
            self.store.sync()
        return self._respond(event, "", sealed, started)

    def _wait_for_claim(self, event: Event, sub: str, body: str, until: float) -> Claim:
        """A callback claimed by another worker: wait until it is done, or until its
        lease runs out (that worker died) and this one takes it over."""
        until -= self.budget / 2  # a takeover leaves its hooks half the budget at least
        while True:
            time.sleep(max(0.0, min(POLL_INTERVAL * 5, until - time.monotonic())))
            if time.monotonic() >= until:
                return Claim("busy")
            claim = self.store.claim(  # the same delivery again: not counted again
                event.callid, event.name, sub, lease=self.lease, body=body, redelivery=False
            )
            if claim.status != "busy":
                return claim

    def _work(
        self,
        event: Event,
        sub: str,
        trace: dict[str, Any],
        claim: Claim,
        deadline: float,
        started: float,
    ) -> tuple[str, Trace]:
        """Run the plugins' DiCE/Notify work that has not succeeded yet; record the
        callback done, or waiting for a retry, or parked. Returns which, and the trace
        recorded. If the core
        itself fails meanwhile (a flush to disk), the work waits for a retry, and the
        error is raised: whether it is on disk is not known."""
        skip = set(claim.done)
        if claim.attempts > 1:
            trace["attempt"] = claim.attempts
            trace["notes"].append(
                f"attempt {claim.attempts}"
                + (f"; already done: {', '.join(sorted(skip))}" if skip else "")
            )
        try:
            self._run_hooks(
                event, deadline, trace, decision=False, skip=skip, attempt=claim.attempts
            )
        except Exception as exc:
            problem = {"plugin": "(core)", "error": f"{type(exc).__name__}: {exc}"}
            self._record(event, sub, trace, claim, [problem], skip, deadline, started)
            raise
        failed = [p for p in trace["plugins"] if p.get("error")]
        done = skip | {p["plugin"] for p in trace["plugins"] if not p.get("error")}
        return self._record(event, sub, trace, claim, failed, done, deadline, started)

    def _record(
        self,
        event: Event,
        sub: str,
        trace: dict[str, Any],
        claim: Claim,
        failed: list[dict[str, Any]],
        done: set[str],
        deadline: float,
        started: float,
    ) -> tuple[str, Trace]:
        """Record how the work of ``claim`` went: done, waiting for a retry (with the
        backoff), or parked after ``policy.retry_attempts``."""
        try:  # before the claim's lease ends, so no other worker has taken it yet
            with self.store.until(deadline + LEASE_MARGIN / 2):
                if not failed:
                    trace["rule"] = "observed"
                    sealed = self._seal(trace, started)
                    self._finish(event, sub, None, sealed, claim.attempts)
                    return "done", sealed
                policy = self.settings.policy
                park = claim.attempts >= policy["retry_attempts"]
                delay = min(
                    policy["retry_backoff"] * 2 ** (claim.attempts - 1),
                    policy["retry_max_backoff"],
                )
                error = "; ".join(f"{p['plugin']}: {p['error']}" for p in failed)
                trace["rule"] = "parked" if park else "retry"
                trace["notes"].append(
                    f"parked after {claim.attempts} attempts: {error}"
                    if park
                    else f"retry in {delay:g} s: {error}"
                )
                sealed = self._seal(trace, started)
                self.store.postpone(
                    event.callid,
                    event.name,
                    sub,
                    attempts=claim.attempts,
                    done=sorted(done),
                    error=error,
                    retry_at=time.time() + delay,
                    park=park,
                    trace=sealed.to_json(),
                )
                (log.error if park else log.warning)(
                    "%s for call %s %s: %s",
                    event.name,
                    event.callid,
                    f"parked after {claim.attempts} attempts" if park else f"retried in {delay:g} s",
                    error,
                )
                return ("parked" if park else "retry"), sealed
        except Exception as exc:  # noqa: BLE001 - the claim's lease runs out: retried then
            log.error(
                "could not record the outcome of %s for call %s (%s); retried when its lease ends",
                event.name,
                event.callid,
                exc,
            )
            trace["notes"].append("outcome not recorded; retried when the claim's lease ends")
            return "retry", self._seal(trace, started)

    def retry(self, item: Waiting) -> str:
        """Run the plugins' work on a received DiCE or Notify again (for the retry
        worker and ``serve.py inbox retry``): ``done``, ``retry``, ``parked``, or
        ``taken`` when another worker claimed it first."""
        started = time.monotonic()
        deadline = started + self.budget
        with self.store.until(deadline):
            claim = self.store.take(item, self.lease)
        if claim is None:
            return "taken"
        try:
            if item.body is None:  # recorded before bodies were kept: nothing to run
                raise EventError("body", "no body recorded for this callback")
            event = parse_event(item.body.encode())
        except EventError as exc:  # nothing a retry can change: for an operator to see
            self.store.postpone(
                item.callid,
                item.event,
                item.sub,
                attempts=claim.attempts,
                done=list(item.done),
                error=str(exc),
                retry_at=time.time(),
                park=True,
                trace="{}",
            )
            self.metrics.child(self.metrics.retries, item.event, "parked").inc()
            return "parked"
        trace = self._new_trace(event)
        with self.store.deferred_flush() as mine:
            outcome, _ = self._work(event, item.sub, trace, claim, deadline, started)
        self.store.flush(mine.seq)
        self.metrics.child(self.metrics.retries, event.name, outcome).inc()
        return outcome

    def replay(self, event: Event, at: float) -> Trace:
        """Run the plugins on a recorded callback again, for ``core.replay``: their hooks
        are called (``CallContext.now`` is ``at``, when it arrived) and, for an ICE, ACE
        or PIE, merged into the answer recorded in the returned trace, as for a live
        callback, and its after-answer observers run (on this thread); but nothing is
        claimed or recorded by the core. Not for a pipeline serving callbacks: it sets
        the calls' clock."""
        started = time.monotonic()
        deadline = started + self.budget
        trace = self._new_trace(event)
        trace["received_at"] = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
        self.call_clock = lambda: at
        if event.name not in DECISION_EVENTS:
            self._run_hooks(event, deadline, trace, decision=False)
            trace["rule"] = "observed"
            sealed = self._seal(trace, started)
        else:
            sealed = self._seal(trace, started, self._decided(event, deadline, trace))
        for impl in self.plugins.impls("switchboard_after_answer"):
            _observer(impl, event, sealed.answer, sealed)
        return sealed

    # ------------------------------------------------------------------ running hooks

    def _run_hooks(
        self,
        event: Event,
        deadline: float,
        trace: dict[str, Any],
        *,
        decision: bool,
        skip: set[str] | frozenset[str] = frozenset(),
        attempt: int = 1,
    ) -> list[tuple[str, Decision | None]] | None:
        """Run every plugin's hook for ``event``, each timed and isolated, as
        ``core.dispatch`` schedules them. Returns ``(plugin, decision)`` in precedence
        order, or ``None`` when a plugin without its own timeout was still running as
        the budget ran out.

        Plugins in ``skip`` are not run (their work on this callback succeeded before).
        A plugin whose circuit breaker is open is not run either: its ``on_error``
        applies at once (see ``core.breaker``).
        """
        calls: list[tuple[Call, str]] = []
        shunned: list[tuple[Impl, str, str]] = []
        now = time.monotonic()
        for impl, config, on_error, timeout, plugin_log in self._plans[event.name]:
            if impl.plugin in skip:
                continue
            if self._running.full(impl.plugin):
                shunned.append((impl, on_error, "saturated"))
                continue
            if not self.breaker.allows(impl.plugin, now):
                shunned.append((impl, on_error, "breaker-open"))
                continue
            ctx = CallContext(
                event.callid, event.name, impl.plugin, config, self.store, deadline, plugin_log,
                attempt, self.call_clock,
            )
            calls.append((Call(impl, impl.plugin, event, ctx, timeout, self._running), on_error))
        to_run = [call for call, _ in calls]
        shadows = None
        if event.name in self._shadow_plans:  # after every enabled plugin, in the same dispatch
            shadows = self._shadow_calls(event, deadline, now)
            to_run += shadows[0]

        cutoff = deadline - self.budget * MERGE_RESERVE
        dispatched = dispatch(self.executor, to_run, cutoff)
        results: list[tuple[str, Decision | None]] = []
        over_budget = False
        for impl, on_error, why in shunned:
            skipped = self._shunned(impl.plugin, why, event, now)
            trace["plugins"].append(skipped)
            results.append(self._on_error(impl.plugin, on_error, skipped, decision))
        flush = 0
        for call, on_error in calls:
            entry, late = self._settle(call, event, dispatched, cutoff, decision)
            if late:
                over_budget = True
            if call.status == "done":  # what it committed (before it raised, too)
                flush = max(flush, call.seq)
            if "error" in entry:
                results.append(self._on_error(call.plugin, on_error, entry, decision))
            else:
                results.append((call.plugin, call.value if "decision" in entry else None))
            trace["plugins"].append(entry)
        if shadows is not None:
            self._shadow_results(event, *shadows, dispatched, cutoff, now, trace)
        # the commits of every hook that finished reach the disk once, before the answer
        self.store.flush(flush)
        results.sort(key=lambda r: self._rank[r[0]])  # precedence order, shunned included
        if decision and over_budget:
            return None
        return results

    def _shunned(self, plugin: str, why: str, event: Event, now: float) -> dict[str, Any]:
        """The trace entry of a plugin not called: ``saturated`` or ``breaker-open``."""
        if why == "saturated":
            error = (
                f"{self._running.count(plugin)} of its calls were running already "
                "(at most half the hook workers): not called"
            )
        else:
            left = self.breaker.left(plugin, now)
            error = f"circuit breaker open for {left:.1f} s more after repeated timeouts"
        skipped: dict[str, Any] = {"plugin": plugin, "status": why, "ms": 0.0}
        skipped["error"] = error
        self.metrics.child(self.metrics.plugin_errors, plugin, event.name, why).inc()
        return skipped

    def _settle(
        self,
        call: Call,
        event: Event,
        dispatched: float,
        cutoff: float,
        decision: bool,
        shadow: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        """How one hook call went, as its trace entry (``status``, ``ms``, and
        ``decision`` or ``error``), with its circuit breaker told and its metrics
        counted; and whether it was left running, or not started, past the cutoff."""
        plugin = call.plugin
        entry: dict[str, Any] = {"plugin": plugin}
        late = False
        if call.status == "timeout":
            waited = call.wait_until(dispatched, cutoff) - call.started
            entry.update(status="timeout", ms=_ms(time.monotonic() - call.started))
            entry["error"] = f"still running after {waited:.3f} s"
            if self.breaker.timed_out(plugin, time.monotonic()):
                self._breaker_opened(plugin)
            late = call.started + call.timeout > cutoff
        elif call.status == "not-started":  # not the plugin's fault; it will not run now
            self.breaker.untried(plugin)
            waited = call.wait_until(dispatched, cutoff) - dispatched
            entry.update(status="not-started", ms=_ms(time.monotonic() - dispatched))
            entry["error"] = f"no hook worker was free within {waited:.3f} s"
            late = dispatched + call.timeout > cutoff
        elif call.status == "saturated":
            self.breaker.untried(plugin)
            entry.update(status="saturated", ms=0.0)
            entry["error"] = f"{self._running.limit} of its calls were running already: not started"
        elif call.error is not None:
            self.breaker.succeeded(plugin)  # it came back: it does not hang
            entry.update(status="error", ms=_ms(call.elapsed))
            entry["error"] = f"{type(call.error).__name__}: {call.error}"
        else:
            entry["ms"] = _ms(call.elapsed)
            self.breaker.succeeded(plugin)
            value = call.value
            if decision and value is not None and not isinstance(value, Decision):
                entry["status"] = "error"
                entry["error"] = f"returned {type(value).__name__}, expected Decision or None"
            elif decision and value is not None:
                entry.update(status="decided", decision=value.describe())
            else:
                entry["status"] = "abstained" if decision else "ok"
        if "error" in entry:
            errors = self.metrics.plugin_errors
            self.metrics.child(errors, plugin, event.name, entry["status"]).inc()
            self._plugin_logs.get(plugin, log).warning(
                "%s %s%s for call %s: %s",
                event.name,
                entry["status"],
                " (in shadow: the answer is not affected)" if shadow else "",
                event.callid,
                entry["error"],
            )
        self.metrics.child(self.metrics.plugin_latency, plugin, event.name).observe(
            entry["ms"] / 1000
        )
        return entry, late

    def _shadow_calls(
        self, event: Event, deadline: float, now: float
    ) -> tuple[list[Call], list[tuple[str, str]]]:
        """The shadow plugins' calls for a decision callback, each with the shadow store;
        and the plugins not called, with why (``saturated``, ``breaker-open``)."""
        calls: list[Call] = []
        shunned: list[tuple[str, str]] = []
        for impl, config, _, timeout, plugin_log in self._shadow_plans[event.name]:
            if self._running.full(impl.plugin):
                shunned.append((impl.plugin, "saturated"))
            elif not self.breaker.allows(impl.plugin, now):
                shunned.append((impl.plugin, "breaker-open"))
            else:
                ctx = CallContext(
                    event.callid, event.name, impl.plugin, config, self.shadow_store, deadline,
                    plugin_log, 1, self.call_clock,
                )
                calls.append(Call(impl, impl.plugin, event, ctx, timeout, self._running))
        return calls, shunned

    def _shadow_results(
        self,
        event: Event,
        calls: list[Call],
        shunned: list[tuple[str, str]],
        dispatched: float,
        cutoff: float,
        now: float,
        trace: dict[str, Any],
    ) -> None:
        """Trace the shadow plugins' results, marked ``shadow``, after every enabled
        plugin's. A failure is counted (``failed``) and applies no ``on_error``; a
        decision, or no opinion, waits in ``trace["shadowed"]`` for ``_shadow_effects``
        to compare it with the answer."""
        entries = [self._shunned(plugin, why, event, now) for plugin, why in shunned]
        shadowed: list[tuple[dict[str, Any], Decision | None]] = []
        for call in calls:
            entry, _ = self._settle(call, event, dispatched, cutoff, True, shadow=True)
            entries.append(entry)
            if "error" not in entry:
                shadowed.append((entry, call.value if "decision" in entry else None))
        counter = self.metrics.shadow_decisions
        for entry in entries:
            entry["shadow"] = True
            if "error" in entry:
                self.metrics.child(counter, entry["plugin"], event.name, "failed").inc()
        trace["plugins"] += entries
        trace["shadowed"] = shadowed

    def _plan(
        self, event: str, impls: Callable[[str], tuple[Impl, ...]] | None = None
    ) -> tuple[Plan, ...]:
        """What calling each plugin's hook for ``event`` takes, worked out once: the
        implementation, its settings, its ``on_error``, its timeout and its logger;
        for the enabled plugins, or those ``impls`` gives (the shadow ones)."""
        plan = []
        for impl in (impls or self.plugins.impls)(f"switchboard_{event}"):
            config = self.settings.plugins.get(impl.plugin) or PluginConfig(impl.plugin, {})
            default = "deny" if event in DECISION_EVENTS else "abstain"
            own = config.get("timeout")
            timeout = own if own is not None else self.budget * DEFAULT_TIMEOUT_SHARE
            plugin_log = self._plugin_logs.get(impl.plugin) or logging.getLogger(
                f"switchboard.plugin.{impl.plugin}"
            )
            plan.append((impl, config, config.get("on_error") or default, timeout, plugin_log))
        return tuple(plan)

    def _breaker_opened(self, plugin: str) -> None:
        self.metrics.child(self.metrics.breaker_trips, plugin).inc()
        self._plugin_logs.get(plugin, log).error(
            "circuit breaker opened after %d timeouts in %g s: the plugin is skipped (its "
            "on_error applies) for %g s",
            self.breaker.threshold,
            self.breaker.window,
            self.breaker.cooldown,
        )

    def _on_error(
        self, plugin: str, on_error: str, entry: dict[str, Any], decision: bool
    ) -> tuple[str, Decision | None]:
        """What a plugin that failed (``entry["status"]``) counts as: its ``on_error``."""
        entry["on_error"] = on_error
        if decision and on_error == "deny":
            return plugin, Decision(deny=True, reason=f"plugin {entry['status']} (on_error=deny)")
        return plugin, None

    # ------------------------------------------------------------------ recording

    def _new_trace(self, event: Event) -> dict[str, Any]:
        """The trace being drafted while the callback is processed (``_seal`` turns it
        into the ``core.trace.Trace`` recorded and shown)."""
        return {
            "callid": event.callid,
            "event": event.name,
            "received_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "rule": None,
            "duplicate": False,
            "plugins": [],
            "decided_by": [],
            "capped_by": None,
            "conflicts": [],
            "notes": [],
            "attempt": None,
        }  # ``revision`` is the pipeline's own, added by ``_seal``

    def _seal(
        self, draft: dict[str, Any], started: float, answer: dict[str, Any] | None = None
    ) -> Trace:
        return Trace(
            callid=draft["callid"],
            event=draft["event"],
            received_at=draft["received_at"],
            rule=draft["rule"],
            duplicate=draft["duplicate"],
            plugins=tuple(
                PluginResult(
                    p["plugin"],
                    p["status"],
                    p.get("ms", 0.0),
                    frozen(p["decision"]) if "decision" in p else None,
                    p.get("error"),
                    p.get("on_error"),
                    p.get("shadow", False),
                    p.get("would_change"),
                    frozen(p["would_answer"]) if "would_answer" in p else None,
                )
                for p in draft["plugins"]
            ),
            decided_by=tuple(draft["decided_by"]),
            capped_by=draft["capped_by"],
            conflicts=frozen(draft["conflicts"]),
            notes=tuple(draft["notes"]),
            answer=frozen(answer) if answer is not None else None,
            elapsed_ms=_ms(time.monotonic() - started),
            attempt=draft["attempt"],
            revision=self.revision,
        )

    def _finish(
        self, event: Event, sub: str, body: str | None, trace: Trace, attempts: int
    ) -> None:
        action = trace.answer["action"] if trace.answer else None
        outcome = action["name"] if action else (trace.rule or "")
        summary = Summary(
            rule=trace.rule,
            decided_by=",".join(trace.decided_by) or None,
            capped_at=action.get("maxDuration") if action else None,
            capped_by=trace.capped_by,
            fallback=trace.rule in FALLBACK_RULES,
            elapsed_ms=trace.elapsed_ms,
            failed=",".join(  # a shadow plugin's failure changed nothing
                f"{p.plugin}:{p.status}"
                for p in trace.plugins
                if p.status not in _FINE and not p.shadow
            )
            or None,
        )
        self.store.finish(
            event.callid, event.name, sub, body, trace.to_json(), outcome, attempts, summary
        )

    def _respond(self, event: Event, body: str, trace: Trace, started: float) -> Response:
        latency = time.monotonic() - started
        answer = trace.answer
        outcome = answer["action"]["name"] if answer else ("duplicate" if trace.duplicate else "ok")
        if log.isEnabledFor(logging.INFO):
            log.info(
                json.dumps(
                    {
                        "callid": event.callid,
                        "event": event.name,
                        "status": 200,
                        "outcome": outcome,
                        "rule": trace.rule,
                        "latency_ms": _ms(latency),
                        "plugins": {
                            p.plugin: f"{p.status}:{p.ms}ms"
                            + (f":{p.decision['kind']}" if p.decision is not None else "")
                            + (_shadow_note(p) if p.shadow else "")
                            for p in trace.plugins
                        },
                        "conflicts": len(trace.conflicts),
                    },
                    separators=(",", ":"),
                )
            )
        self._count(event, trace, outcome, latency)
        after = None
        observers = self.plugins.impls("switchboard_after_answer")
        if observers:
            after = functools.partial(self._after_answer, observers, event, trace)
        return Response(200, body, after)

    def _count(self, event: Event, trace: Trace, outcome: str, latency: float) -> None:
        m, name, rule = self.metrics, event.name, trace.rule
        m.child(m.callbacks, name, outcome).inc()
        m.child(m.latency, name).observe(latency)
        if name not in DECISION_EVENTS or rule is None:
            return
        m.child(m.decisions, name, rule).inc()
        if rule in FALLBACK_RULES:
            m.child(m.fallbacks, name, rule).inc()
        if trace.conflicts:
            m.child(m.conflicts, name).inc(len(trace.conflicts))
        if rule == "deny":
            for plugin in trace.decided_by:
                m.child(m.denials, name, plugin).inc()
        if trace.capped_by:
            m.child(m.caps, name, trace.capped_by).inc()

    def count_reject(self, status: int, reason: str | None = None) -> None:
        """Count a request refused before any plugin ran."""
        self.metrics.child(self.metrics.rejected, str(status)).inc()
        self.metrics.child(self.metrics.callbacks, "unknown", "rejected").inc()
        if reason:
            self.metrics.child(self.metrics.signature_failures, reason).inc()

    def _reject(
        self,
        started: float,
        status: int,
        message: str,
        *,
        field_name: str | None = None,
        reason: str | None = None,
    ) -> Response:
        line: dict[str, Any] = {
            "callid": None,
            "event": None,
            "status": status,
            "outcome": "rejected",
            "error": message,
        }
        if reason:
            line["reason"] = reason
        line["latency_ms"] = _ms(time.monotonic() - started)
        log.warning(json.dumps(line, separators=(",", ":")))
        self.count_reject(status, reason)
        return Response(status, error_body(message, field_name))

    def _after_answer(self, impls: tuple[Impl, ...], event: Event, trace: Trace) -> None:
        """Run the after-answer observers (``Response.after``). The web layer calls this
        on the thread that served the request, once the answer is sent, so no thread
        hand-off is paid for the common, quick observer. A plugin whose observer once
        takes longer than ``SLOW_OBSERVER`` runs in the worker pool from then on, so a
        slow or hung observer holds a server thread at most once."""
        answer = trace.answer
        for impl in impls:
            if impl.plugin in self._slow_observers:
                self.in_background(functools.partial(_observer, impl, event, answer, trace))
                continue
            began = time.monotonic()
            _observer(impl, event, answer, trace)
            took = time.monotonic() - began
            if took > SLOW_OBSERVER:
                self._slow_observers.add(impl.plugin)
                self._plugin_logs.get(impl.plugin, log).warning(
                    "switchboard_after_answer took %.3f s: it runs in the worker pool from now on",
                    took,
                )

    def in_background(self, task: Callable[[], None]) -> None:
        """Run ``task`` in the worker pool; ``wait_idle`` waits for it."""
        fut = self.executor.submit(task)
        self._pending_after.add(fut)
        fut.add_done_callback(self._pending_after.discard)


def _observer(impl: Impl, event: Event, answer: Any, trace: Any) -> None:
    bound = CALLID.set(event.callid or None)
    try:
        impl(event=event, answer=answer, trace=trace)
    except Exception:
        logging.getLogger(f"switchboard.plugin.{impl.plugin}").exception(
            "switchboard_after_answer failed for call %s", event.callid
        )
    finally:
        CALLID.reset(bound)


_FINE = frozenset({"decided", "abstained", "ok"})  # plugin statuses that are no failure


def _shadow_note(result: PluginResult) -> str:
    """How a shadow plugin's result ends in the callback's log line."""
    return ":shadow:would-change" if result.would_change else ":shadow"


def arrival(event: Event) -> Received | None:
    """What the calls view keeps of a callback when it is claimed: the ICE's and the
    DiCE's numbers, the DiCE's duration and result."""
    if isinstance(event, Ice):
        to = event.to
        return Received(event.cli_e164 or event.cli, (to.e164 or to.endpoint) if to else None)
    if isinstance(event, Dice):
        to = event.to
        return Received(
            event.from_e164 or event.from_,
            (to.e164 or to.endpoint) if to else None,
            None if event.duration is None else int(event.duration),
            event.result,
        )
    return None


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)
