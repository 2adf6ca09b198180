"""The console's policy pages: Replay (a candidate configuration tried on the recorded
calls, as ``switchboard replay`` does) and Revisions (the configurations loaded, one's
content, what changed between two, as ``switchboard revisions`` does).

* A replay is posted with the CSRF token and audited like any change (who, when, the
  window, then the candidate revision, the calls and how many answers changed). It runs
  in a sandbox (``core.replay``): the running store is only read. One runs at a time.
* The pasted configuration is never shown again (it may hold secrets): after a run or
  an error the text area is empty. When it has no ``[sinch]`` section, the running
  configuration file's is used, so operators need not paste the application secret.
* What is shown of a configuration is ``Settings.describe()`` (secrets redacted), with
  the secrets of any URL in it removed as the Plugins page does.
"""

from __future__ import annotations

import threading
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import bottle

from core import revisions as revs
from core.config import ConfigError, Settings, parse
from core.console import html as h
from core.console.views import chrome, pretty, render, scrubbed
from core.plugins import PluginError
from core.replay import Report, describe_answer, replay

if TYPE_CHECKING:
    from core.console.app import Req

    Perform = Callable[[Req, str, str | None, Callable[[], str]], tuple[str, str]]

DEFAULT_LIMIT = 500  # calls a replay takes when the form does not say
MAX_LIMIT = 5000
SHOWN = 500  # changed answers listed on the page
LOADS = 50  # configuration loads listed
TEXT_LIMIT = 200_000  # characters of a pasted configuration
_one_at_a_time = threading.Lock()


# ---------------------------------------------------------------------------- replay


@dataclass(frozen=True)
class Ask:
    """What the Replay form asks for, but the configuration (never kept)."""

    since: float | None = None
    until: float | None = None
    callid: str | None = None
    limit: int = DEFAULT_LIMIT

    @property
    def shown(self) -> dict[str, str]:
        """The form's fields as they are shown again."""
        return {
            "since": h.form_time(self.since),
            "until": h.form_time(self.until),
            "callid": self.callid or "",
            "limit": str(self.limit),
        }

    @property
    def window(self) -> str:
        """The calls asked for, as the audit log says it."""
        parts = [
            f"since {h.when(self.since)}" if self.since is not None else "",
            f"until {h.when(self.until)}" if self.until is not None else "",
            f"call {self.callid}" if self.callid else "",
            f"at most {self.limit} calls",
        ]
        return ", ".join(p for p in parts if p)


LAST_TIME = 253402300800.0  # 10000-01-01: the first time a page cannot show


def ask_of(forms: Any) -> tuple[Ask, list[str]]:
    """The Replay form's window and limit, and what is wrong with them."""
    problems: list[str] = []
    times: dict[str, float | None] = {}
    for name in ("since", "until"):
        try:
            at = h.parse_epoch(str(forms.getunicode(name) or "")[:64])
            if at is not None and not 0 <= at < LAST_TIME:  # shown again, so it must print
                raise ValueError(name)
            times[name] = at
        except ValueError:
            problems.append(f"{name}: not a time (use 2026-11-29T08:00, UTC)")
            times[name] = None
    raw = str(forms.getunicode("limit") or "").strip()
    limit = DEFAULT_LIMIT
    if raw:
        try:
            limit = int(raw)
        except ValueError:
            problems.append(f"limit: not a whole number of calls: {raw[:20]!r}")
        else:
            if not 1 <= limit <= MAX_LIMIT:
                problems.append(f"limit: from 1 to {MAX_LIMIT} calls")
                limit = DEFAULT_LIMIT
    callid = str(forms.getunicode("callid") or "").strip()[:200] or None
    return Ask(times["since"], times["until"], callid, limit), problems


def candidate_of(text: str, running: Settings) -> Settings:
    """The pasted configuration's core sections, validated as a server would (its plugins'
    sections are validated when the replay builds them). Without a ``[sinch]`` section,
    the running configuration file's is used. Raises ``ConfigError``, naming the key."""
    try:
        data = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:  # its message says where, not what
        raise ConfigError(f"not valid TOML ({exc})") from None
    if "sinch" not in data:
        data["sinch"] = _running_sinch(running)
    return parse(data, running.path)


def _running_sinch(running: Settings) -> Any:
    missing = "sinch: the candidate has no [sinch] section"
    if running.path is None:
        raise ConfigError(f"{missing}, and the running configuration has no file to take it from")
    try:
        data = tomllib.loads(running.path.read_text(encoding="utf-8"), parse_float=Decimal)
    except OSError as exc:
        raise ConfigError(
            f"{missing}, and the running configuration file cannot be read ({exc.strerror})"
        ) from None
    except tomllib.TOMLDecodeError:
        raise ConfigError(
            f"{missing}, and the running configuration file is not valid TOML now"
        ) from None
    return data.get("sinch", {})


def replay_page(
    req: Req,
    ask: Ask | None = None,
    *,
    report: Report | None = None,
    error: str | None = None,
    problems: tuple[str, ...] | list[str] = (),
) -> str:
    running = revs.revision_for(req.runtime.settings)
    return render(
        "replay",
        c=chrome(req, wide=True),
        title="Replay",
        shown=(ask or Ask()).shown,
        max_limit=MAX_LIMIT,
        running=running,
        report=report,
        changed=report.changed[:SHOWN] if report else [],
        error=error,
        problems=problems,
        describe=describe_answer,
    )


def run_replay(req: Req, forms: Any, perform: Perform) -> str:
    """A posted replay: refused (400) when the form or the candidate is wrong, else run,
    audited, and its report shown. The pasted text is not shown again, whatever happens."""
    ask, problems = ask_of(forms)
    text = str(forms.getunicode("config") or "")
    if not text.strip():
        problems.append("config: paste a candidate configuration (TOML)")
    elif len(text) > TEXT_LIMIT:
        problems.append(f"config: at most {TEXT_LIMIT} characters")
    if problems:
        bottle.response.status = 400
        return replay_page(req, ask, problems=problems)
    if not _one_at_a_time.acquire(blocking=False):
        bottle.response.status = 409
        return replay_page(
            req, ask, error="Another replay is running: try again when it has finished."
        )
    try:
        done: dict[str, Any] = {}

        def run() -> str:
            try:
                candidate = candidate_of(text, req.runtime.settings)
                report = replay(
                    candidate,
                    req.store,
                    since=ask.since,
                    until=ask.until,
                    callid=ask.callid,
                    limit=ask.limit,
                )
            except (ConfigError, PluginError) as exc:
                done["bad"] = True
                raise ValueError(f"candidate configuration: {exc}") from None
            done["report"] = report
            return (
                f"candidate revision {report.candidate}: {report.calls} call(s), "
                f"{len(report.changed)} of {len(report.results)} answer(s) would change"
            )

        kind, said = perform(req, "replay", ask.window, run)
    finally:
        _one_at_a_time.release()
    if kind != "ok":
        bottle.response.status = 400 if done.get("bad") else 500
        return replay_page(req, ask, error=said)
    return replay_page(req, ask, report=done["report"])


# ---------------------------------------------------------------------------- revisions


def revisions_page(req: Req) -> str:
    query = bottle.request.query
    settings = req.runtime.settings
    running = revs.revision_for(settings)
    loads = revs.loads(req.store, LOADS)
    asked = {k: str(query.getunicode(k) or "").strip()[:64] for k in ("show", "old", "new")}
    problems: list[str] = []

    def content(revision: str) -> tuple[str, dict[str, Any]] | None:
        """A revision's id and its content, shown as people may see it."""
        try:
            found = revs.content(req.store, revision)
        except ValueError as exc:
            problems.append(str(exc))
            return None
        if found is None and running.startswith(revision.lower()):  # not recorded (yet)
            return running, _clean(revs.policy_content(settings))
        if found is None:
            problems.append(f"no revision {revision!r} is recorded")
            return None
        return revs.revision_of(found), _clean(found)

    shown = content(asked["show"]) if asked["show"] else None
    changes: tuple[str, str, list[str]] | None = None
    if asked["old"] or asked["new"]:
        old = content(asked["old"] or running)
        new = content(asked["new"] or running)
        if old is not None and new is not None:
            changes = (old[0], new[0], revs.differences(old[1], new[1]))
    if problems:
        bottle.response.status = 404 if any("no revision" in p for p in problems) else 400
    previous = {
        i: loads[i + 1].revision
        for i in range(len(loads) - 1)
        if loads[i + 1].revision != loads[i].revision
    }
    return render(
        "revisions",
        c=chrome(req, wide=True),
        title="Revisions",
        running=running,
        loads=loads,
        previous=previous,
        choices=list(dict.fromkeys([running, *(x.revision for x in loads)])),
        asked=asked,
        shown=shown,
        changes=changes,
        problems=problems,
        pretty=pretty,
    )


def _clean(content: Mapping[str, Any]) -> dict[str, Any]:
    """A revision's content without the secrets of any URL in it."""
    return dict(scrubbed(content, keep_user=False))
