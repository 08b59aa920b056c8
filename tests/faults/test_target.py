"""A target that goes away: cut mid-statement, refusing connections, its server stopped. Each exec
answers `failed` with the driver's message, and the invariants of docs/fault-suite.md hold."""

from __future__ import annotations

import pytest

from tests.faults.checks import check_invariants, in_thread, new_marker, statement
from tests.faults.harness import wait_for

pytestmark = pytest.mark.faults


def test_an_unreachable_target_fails_cleanly(h, scenario):
    bob = scenario.agent("bob")
    # Cut while a statement runs, then refused connections, then the target's server stopped.
    marker = new_marker("cut")
    thread, box = in_thread(
        lambda: bob.call(
            "exec", {"connection_name": "target", "input": statement(marker, sleep=3)}, timeout=60
        )
    )
    wait_for(lambda: h.target_running(marker), timeout=60, what="the statement to run on the target")
    h.target_proxy.cut()
    thread.join(timeout=60)
    answers = [box["value"]]
    answers.append(bob.call("exec", {"connection_name": "target", "input": statement(new_marker("refused"))}))
    h.target_proxy.restore()
    h.target_pg.stop("fast")
    answers.append(bob.call("exec", {"connection_name": "target", "input": statement(new_marker("stopped"))}))
    h.target_pg.start()
    for answer in answers:
        assert answer.ok and answer.data["status"] == "failed", answer
        assert answer.data["output"] and "internal error" not in answer.data["output"], answer
    check_invariants(scenario)
