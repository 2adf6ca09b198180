"""The calls view (core.calls): recent calls, one call's timeline, the overview, through
the real pipeline on both stores."""

from __future__ import annotations

from core import calls
from core.decisions import Decision
from core.svaml import ConnectPstn
from tests.helpers import Fixed, dice, ice, post


def test_a_call_is_listed_with_its_answer_rule_cap_and_duration(make, backend):
    rt, app = make(
        {
            "router": Fixed(Decision.propose(ConnectPstn(number="+15612600684"))),
            "cap": Fixed(Decision.cap(300)),
        }
    )
    post(app, ice("c1", cli="+442071234567", to="+15612600684"))
    post(app, dice("c1", duration=95, from_="+442071234567"))
    rt.pipeline.wait_idle()
    page = calls.recent_calls(rt.store)
    assert page.next is None
    (row,) = page.rows
    assert (row.callid, row.caller, row.destination) == ("c1", "+442071234567", "+15612600684")
    assert (row.answer, row.rule, row.decided_by) == ("connectPstn", "proposal", ("router",))
    assert (row.capped_at, row.capped_by, row.duration, row.result) == (300, "cap", 95, "ANSWERED")
    assert (row.fallback, row.duplicates) == (False, 0)
