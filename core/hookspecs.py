"""The plugin contract: every hook a Switchboard plugin can implement.

A plugin is a module, or a class, with functions (methods) marked ``@hookimpl``, named
after the specs below. Third-party packages register it under the entry-point group
``switchboard``::

    [project.entry-points.switchboard]
    myplugin = "switchboard_myplugin"            # a module
    other = "switchboard_other:OtherPlugin"      # a class: one instance per server

A class is instantiated with no arguments each time a server (or command) loads its
plugins, so it can keep what ``switchboard_configure`` prepared on ``self``.

Installed is not enabled: only plugins named in ``[plugins] enabled`` of config.toml run,
and that list's order is their precedence. A plugin implements only the hooks it needs,
and may accept only the arguments it needs (pluggy passes arguments by name).

How the core calls hooks
------------------------
The core calls each enabled plugin's implementation itself, in precedence order, so that
it can time, isolate and attribute every result; pluggy's own call loop is not used for
the event hooks. Consequences for plugin authors:

* ``tryfirst``/``trylast``/``hookwrapper`` have no effect on event hooks (wrappers are
  refused at start-up); precedence comes from config.toml only.
* The hooks of one callback run in the core's worker pool, against a deadline: one
  after another in a single worker, and those not started 20 ms later each in a worker
  of their own as well (``core.dispatch``). Do not rely on any order or on running
  alone. A plugin that raises, returns something that is not a
  ``Decision``/``None``, or is still running at its ``timeout`` is handled by its
  ``on_error`` setting: ``"deny"`` (the default for decision hooks: fail closed) turns
  it into a deny, ``"abstain"`` into no opinion. The error is recorded in the trace.
* Inputs are immutable: events are frozen structs, the plugin's config
  (``core.PluginConfig``) a read-only mapping, the trace read-only. Plugins never build
  raw SVAML JSON; they return ``Decision`` objects built from the SVAML types
  (``core.ConnectPstn``, ``core.Say``, ...).

Every plugin gets two settings of its own from the core, in ``[plugins.<name>]``:
``on_error = "deny" | "abstain"`` and ``timeout`` (seconds, at most the event budget).

The per-call context ``ctx`` (``core.CallContext``) carries:
``callid``, ``event`` (its name), ``plugin`` (this plugin's name), ``config`` (this
plugin's validated settings), ``store`` (the shared ``core.Store``), ``deadline``
(``time.monotonic()`` value by which the answer must be ready; the plugin's own waits
for the store end there with ``core.StoreTimeout``), ``remaining()`` (seconds
left), ``log`` (a ``logging.Logger`` named ``switchboard.plugin.<name>``) and
``attempt`` (1, or 2 and up when a DiCE/Notify hook is run again after a failure).

A plugin that times out repeatedly (``policy.breaker_timeouts`` within
``policy.breaker_window`` seconds) is not called for ``policy.breaker_cooldown``
seconds: its ``on_error`` applies at once, and the trace says ``breaker-open``.

A plugin named in ``[plugins] shadow`` instead of ``enabled`` runs in shadow: its
decision hooks are called on live traffic with the enabled plugins' and traced, never
merged; its ``ctx.store`` (and the ``store`` of its ``switchboard_startup``) reads the
real store, but every transaction it opens is rolled back. Of the other hooks it gets
only ``switchboard_config_keys``, ``switchboard_store_migrations`` (applied to the
real store), ``switchboard_configure``, ``switchboard_startup`` and
``switchboard_shutdown``. See "Trying a plugin in shadow" in docs/plugins.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import click
import pluggy
from prometheus_client import CollectorRegistry

from core.config import Settings
from core.console.page import ConsolePage
from core.context import CallContext
from core.decisions import Decision
from core.events import Ace, Dice, Event, Ice, Notify, Pie
from core.store import Migration, Store
from core.trace import Trace

PROJECT = "switchboard"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --------------------------------------------------------------------------- decisions


@hookspec
def switchboard_ice(event: Ice, ctx: CallContext) -> Decision | None:
    """Decide an incoming call (ICE): may it be connected, and how?

    Called once per new ICE (a repeated delivery of the same ICE is answered from the
    store without calling plugins), for every enabled plugin, and for every shadow
    plugin (``plugins.shadow``), whose decision is traced, never merged.

    :param event: the incoming call; ``event.to.e164`` is the dialled number in E.164,
        ``event.cli_e164`` the caller's, ``event.user_rate`` Sinch's rate (Decimal).
    :param ctx: the per-call context (see the module docstring).

    Return a ``Decision``:

    * ``Decision.denied(reason, prompt=..., answer=True)``: refuse; any deny wins
      (rule 1). ``answer=True`` puts ``answer`` before the prompt, as Sinch advises for
      a ``say`` at ICE (not every provider plays it to a call not yet answered);
      answering may start billing.
    * ``Decision.propose(action)``: answer with this action; the highest-precedence
      proposal wins, a different lower one is recorded as a conflict (rule 2).
    * ``Decision.allowed(reason, action=...)``: allow; ``action`` is used only if nobody
      proposes one (rule 3).
    * ``Decision.cap(seconds)``: limit the call; the smallest cap wins (rule 4).
    * ``Decision.add(*instructions)``: add instructions (rule 5).

    Return ``None`` for no opinion. With no proposal and no allowing default, the ICE
    is answered by ``policy.ice_default``: hangup (the default) or connectPstn to the
    dialled number. An action with ``suppress_callbacks=True`` is refused (the fallback
    is sent) while any enabled plugin implements ``switchboard_dice``, unless
    ``policy.allow_suppress_callbacks`` is true. ``event.to.type == "did"`` means the
    caller dialled one of the application's own numbers: connecting the call to it
    would call that number itself.
    """


@hookspec
def switchboard_ace(event: Ace, ctx: CallContext) -> Decision | None:
    """Decide an answered call (ACE): continue, hang up, or run a menu.

    Called once per new ACE, for every enabled plugin (and shadow plugin, as for
    ``switchboard_ice``). ``event.amd`` holds answering-machine detection results when
    enabled.

    Return a ``Decision`` as for ``switchboard_ice``; only hangup, continue,
    connectConf and runMenu are legal ACE actions, and playFiles, say, setCookie,
    startRecording and stopRecording the legal instructions. ``None``: no opinion. With
    no proposal the answer is ``continue``.
    """


@hookspec
def switchboard_pie(event: Pie, ctx: CallContext) -> Decision | None:
    """Decide what follows a menu input (PIE).

    Called once per new PIE (each menu result is a new event), for every enabled
    plugin (and shadow plugin, as for ``switchboard_ice``). ``event.menu_result``
    carries ``menu_id``, ``type`` (``sequence``, ``return``, ``timeout``, ...) and
    ``value``.

    Return a ``Decision`` as for ``switchboard_ice`` (legal actions: hangup, continue,
    connectPstn, connectConf, connectSip, runMenu). ``None``: no opinion. With no
    proposal the answer is ``continue``.
    """


# --------------------------------------------------------------------------- observers


@hookspec
def switchboard_dice(event: Dice, ctx: CallContext) -> None:
    """Observe a disconnected call (DiCE): settle, record, notify.

    The core records the verified DiCE in the store before any plugin sees it, and Sinch
    gets its ``200`` once that record is on disk. Then this hook runs for every enabled
    plugin, before the answer is sent, so work committed here is normally durable when
    Sinch gets its answer too. ``event.duration``, ``event.result``, ``event.reason``
    and ``event.debit`` describe the call.

    **At least once.** If the hook raises, overruns its ``timeout``, or the server dies
    while it runs, the core runs it again later from the recorded DiCE (with a backoff:
    ``policy.retry_backoff``, doubling up to ``policy.retry_max_backoff``), until it
    returns, or until ``policy.retry_attempts`` have failed and the work is parked for an
    operator (``serve.py inbox``). Plugins whose hook succeeded are not run again.
    ``ctx.attempt`` is 2 and up for such a retry. So make the work idempotent: key it
    by ``event.callid`` and check, in the same transaction, whether it was done (the
    credit and crm plugins do). Duplicate deliveries of a DiCE already processed are
    dropped by the core before plugins see them.

    Return nothing. Raise when the work could not be done (a store or network error):
    that is what gets it retried; the answer to Sinch does not change.
    """


@hookspec
def switchboard_notify(event: Notify, ctx: CallContext) -> None:
    """Observe a notification (recording available, async AMD, calling error...).

    Called for every distinct Notify body, for every enabled plugin, before the 200 is
    sent, and at least once, exactly as ``switchboard_dice``: the body is recorded first,
    and a hook that raises or overruns is run again later (``ctx.attempt``). Return
    nothing; errors never change the answer.

    ``event.callid`` (and ``ctx.callid``) is ``""`` for a notification that carries
    none: a conference's carries ``event.conference_id`` instead.
    """


@hookspec
def switchboard_after_answer(
    event: Event, answer: Mapping[str, Any] | None, trace: Trace
) -> None:
    """Observe every answered callback, after the answer is decided.

    Called for every callback that passed verification and parsing, including
    duplicates and fallbacks, once the answer has been sent, so it never delays the
    answer: on the thread that served the request (no hand-off to pay for a quick
    observer), or in the core's worker pool for an empty answer (DiCE, Notify) and for
    a plugin whose observer once took longer than 20 ms. Keep it quick; hand slow work
    (network calls) to a thread or an outbox of your own.

    :param event: the parsed event.
    :param answer: the SVAML sent (a read-only mapping), or ``None`` for DiCE/Notify.
    :param trace: the decision trace (``core.Trace``: the rule, each plugin's result
        and time, conflicts, notes; the same as recorded), read-only.

    Return nothing; errors are logged.
    """


@hookspec
def switchboard_call_details(
    store: Store, callids: Sequence[str]
) -> Mapping[str, Mapping[str, str]] | None:
    """Say what this plugin knows of some calls, for an operator listing them.

    Called by the calls view (``core.calls``: ``switchboard calls`` and the operator
    console) once per page of calls, or once for one call's timeline, with the call ids
    shown, for every enabled plugin, in precedence order. Never on the callback path.

    :param store: the shared ``core.Store``: read it with ``store.inspect(sql, params)``
        (on SQLite a connection of its own, so an operator's page never holds up the
        callbacks' reads); never write from here.
    :param callids: the call ids of the page (up to a page's worth, usually 50).

    Return a mapping of call id -> {label: display text}, e.g.
    ``{"c1": {"charge": "0.40 USD", "reservation": "settled"}}``: short, human-readable
    text, shown as is next to the call (labels in the order given). Leave out the calls
    this plugin knows nothing of. Answer a whole page with one indexed query (``WHERE
    callid IN (...)``), not one per call: a page is rendered while an operator waits.

    Return ``None`` (or do not implement) for no details. Results merge by label in
    precedence order: a label already given by a plugin of higher precedence is kept.
    A plugin that raises is logged, and its label shows "details unavailable" for the
    page; the other plugins' details are still shown.
    """


# --------------------------------------------------------------------------- lifecycle


@hookspec
def switchboard_config_keys() -> Mapping[str, Any]:  # type: ignore[empty-body]
    """Declare this plugin's ``[plugins.<name>]`` keys.

    Called once per enabled plugin while the configuration is validated, before
    ``switchboard_configure``. Return a mapping of key name to
    ``core.Key(type, default, help, secret=False, env=None)``; ``type`` may be
    ``list[str]`` or ``dict[str, int]`` (every element is checked) as well as a plain
    type. Unknown keys and wrong types in config.toml then stop the start with a message
    naming the key (and the element). The plugin reads its settings as ``ctx.config``
    (``core.PluginConfig``): ``ctx.config["timeout"]`` or ``ctx.config.timeout``. A key
    declared with ``env="NAME"`` may also come from that environment variable; a
    ``secret=True`` key is redacted wherever settings are shown.

    Return ``None`` (or do not implement) for a plugin without settings.
    """


@hookspec
def switchboard_store_migrations() -> Sequence[Migration]:  # type: ignore[empty-body]
    """Return the schema migrations this plugin needs, oldest first.

    Called once at start-up for every enabled plugin, before ``switchboard_startup``.
    Each ``core.Migration(version, statements)`` is applied once, in a
    transaction, and recorded per plugin; versions must increase. Use portable SQL
    (``?`` placeholders are translated per backend).
    """


@hookspec
def switchboard_configure(settings: Settings, config: Mapping[str, Any]) -> None:
    """Receive the validated configuration.

    Called once per enabled plugin at start-up (and for ``serve.py`` commands) after
    validation. ``settings`` is the whole validated configuration, ``config`` this
    plugin's own section. Raise ``ValueError`` with a clear message to refuse a
    configuration; the start stops naming the plugin.
    """


@hookspec
def switchboard_startup(store: Store, config: Mapping[str, Any], serving: bool) -> None:
    """The store is ready: the server is about to accept callbacks, or a command runs.

    Called once per enabled plugin after migrations, before the first callback.
    ``serving`` is True when callbacks will be served (start background work here:
    daemon threads that stop at ``switchboard_shutdown``) and False when a
    ``serve.py`` command such as ``check`` or a plugin command runs. A shadow plugin
    (``plugins.shadow``) gets a store whose transactions are all rolled back.
    """


@hookspec
def switchboard_replay_rewind(store: Store, since: float) -> None:
    """Put this plugin's state back as it was at ``since`` (Unix seconds), as well as
    it can, before ``serve.py replay`` runs the recorded callbacks from then.

    Called once per enabled plugin of the candidate configuration, after
    ``switchboard_store_migrations`` and before ``switchboard_startup``. ``store`` is the
    replay's sandbox: a scratch copy of the real store's plugin tables as they are now
    (never the real store). Undo what happened since: delete the counters, reservations
    or entries made at or after ``since`` and restore what they changed (the credit
    plugin undoes the calls begun since, giving their charges back). A plugin without this hook replays
    from its current state, and the replay's report says so. Return nothing.
    """


@hookspec
def switchboard_metrics(registry: CollectorRegistry) -> None:
    """Register this plugin's Prometheus collectors.

    Called once per enabled plugin when the server starts, after
    ``switchboard_startup``. ``registry`` is the server's own
    ``prometheus_client.CollectorRegistry`` (served at ``GET /metrics``): create metrics
    with ``registry=registry``, or register a custom collector whose ``collect()`` reads
    the store at scrape time. Name metrics ``switchboard_<plugin>_...``. Return nothing.
    """


@hookspec
def switchboard_shutdown() -> None:
    """The server is stopping.

    Called once per enabled plugin after in-flight callbacks are answered and before
    the store is closed. Stop background work; errors are logged.
    """


@hookspec
def switchboard_register_commands(cli: click.Group) -> None:
    """Add commands to the command line (``switchboard``, or ``python serve.py``).

    Called once per enabled plugin, in precedence order, when a command line needs the
    plugins' commands: to run one, or to list them in ``--help``. Not called by
    ``serve`` nor by the other built-in commands. ``cli`` is the ``click.Group`` the
    built-in commands are registered on, the same way: add commands or groups to it
    with ``@cli.command()`` and ``@cli.group()``. Replacing a command that is already
    there (a built-in, another plugin's) stops the command line, naming the plugin.
    This hook may run before ``switchboard_configure``: read configuration in the
    command, not here.

    A command that needs the store or its plugin's configured state takes the runtime
    with ``core.pass_runtime``: its first argument is then a ``core.runtime.Runtime``
    (``settings``, ``store``, ``plugins``), built from the configuration ``--config``
    names, with migrations applied and every plugin started (``switchboard_startup``
    with ``serving=False``), and closed when the command ends::

        @hookimpl
        def switchboard_register_commands(cli):
            @cli.command(help="list VIP calls")
            @click.option("--json", "as_json", is_flag=True)
            @pass_runtime
            def vip(runtime, as_json):
                ...

    A command returns its exit status: ``0`` or ``None`` for success. Print failures
    as ``error: ...``; raising ``click.ClickException`` also works. Read as an operator
    does, with ``runtime.store.inspect`` (stopped after ``store.inspect_timeout``: the
    command then ends with that error line). Write CSV with ``core.csv_writer(stream)``:
    no cell (a caller id such as ``=HYPERLINK(...)``) is then a spreadsheet formula.

    Return nothing.
    """


# --------------------------------------------------------------------------- console


@hookspec
def switchboard_console_pages() -> Sequence[ConsolePage]:  # type: ignore[empty-body]
    """Add pages to the operator console, and panels to its Overview.

    Called once per enabled plugin, in precedence order, when the operator console
    (``admin.console``) starts, and again after a reload (the new configuration's plugin
    instances serve the pages from then on). Not called when the console is off.

    Return a list of ``core.ConsolePage(path, title, render, actions={}, panel=None)``:

    * the page is served at ``/plugins/<plugin>/<path>`` to logged-in operators, and
      listed in the console's navigation as ``title``;
    * ``render(request)`` returns the page's HTML (the content under its heading).
      ``request`` is a ``core.ConsoleRequest``: ``user``, ``params`` (the query string),
      ``store`` (read with ``store.inspect``, the operators' reads, which never hold up
      the callbacks' own, on indexed columns and a page at a time; one that runs past
      ``store.inspect_timeout`` is stopped, and the console says to narrow the filters),
      ``config`` (this plugin's settings), ``integer(name, minimum=0, maximum=2**63-1)``
      (a numeric query parameter: a value it cannot take is answered ``400`` naming
      it), ``url()``, ``call_url(callid)``, ``calls_url(**filters)`` and
      ``action_form(action, button, ...)`` (a form carrying the CSRF token). Escape what
      you show (``html.escape``); no script runs in the console (its
      Content-Security-Policy forbids it), and never show a secret setting;
    * ``actions`` maps a name to ``function(request) -> str``, run for a form that posts
      ``_action=<name>`` to the page. The console runs it only for a logged-in operator
      whose form carries the right CSRF token (else 403, nothing run), writes who, when,
      the action and the form's fields to its audit log before it runs, and the returned
      text (say what changed) after; then it redirects back to the page, showing that
      text. ``request.form`` holds the posted fields. Raise ``ValueError`` to refuse (the
      message is shown and audited); any other exception is logged and shown as a
      failure;
    * ``panel(request)``, optional, returns a little HTML drawn on the Overview: a few
      figures, each linking to the page or the calls behind it.

    A page that raises is shown as failed; the console and other pages go on. Return
    ``None`` (or do not implement) for no pages. Pages of several plugins never merge:
    each lives under its own plugin's name.
    """
