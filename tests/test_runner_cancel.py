"""A cancel that reaches this process before the job has said how to interrupt it (a session
recorded running and handed to the pool, its exchange not started yet) is kept for the job:
setting the callback runs it at once (gateway/runner.py)."""

from __future__ import annotations

import threading
import uuid

from gateway import runner


def test_a_cancel_before_the_callback_is_run_when_the_callback_is_set(transactional_db):
    session_id = str(uuid.uuid4())
    may_start, interrupted = threading.Event(), threading.Event()

    def job():
        assert may_start.wait(60)
        runner.set_cancel_callback(session_id, interrupted.set)
        return interrupted.is_set()  # interrupted at once, before any work

    future = runner.submit(session_id, job, timeout_seconds=60)
    assert runner.cancel_local(session_id)  # the job is here, not yet interruptible
    may_start.set()
    assert future.result(timeout=60) is True


def test_a_cancel_after_the_callback_calls_it_and_an_unknown_job_is_not_here(transactional_db):
    session_id = str(uuid.uuid4())
    ready, interrupted = threading.Event(), threading.Event()

    def job():
        runner.set_cancel_callback(session_id, interrupted.set)
        ready.set()
        return interrupted.wait(60)

    future = runner.submit(session_id, job, timeout_seconds=60)
    assert ready.wait(60)
    assert not interrupted.is_set()
    assert runner.cancel_local(session_id)
    assert future.result(timeout=60) is True
    assert runner.cancel_local(str(uuid.uuid4())) is False
