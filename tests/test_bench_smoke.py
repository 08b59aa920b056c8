"""The benches' own measuring helpers, on real processes (the benches themselves take minutes)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from exec_latency import process_cpu_seconds, process_tree_cpu_seconds  # noqa: E402

# A parent that only waits, and a child that burns CPU until told to stop: as a prefork Celery worker
# runs its tasks in pool children while the main process idles.
PARENT = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
print(child.pid, flush=True)
sys.stdin.readline()
child.kill()
child.wait()
"""


def test_worker_cpu_counts_the_pool_children():
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        child_pid = int(parent.stdout.readline())
        # Wait on the condition, not a fixed time: the child has used at least 0.3 s of CPU.
        deadline = time.monotonic() + 120
        while (process_cpu_seconds(child_pid) or 0) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        child = process_cpu_seconds(child_pid)
        tree = process_tree_cpu_seconds(parent.pid)
        alone = process_cpu_seconds(parent.pid)
        assert child >= 0.3
        assert tree >= alone + child  # the child's CPU is in the tree's, not in the parent's own
        assert alone < child
    finally:
        parent.stdin.write("\n")
        parent.stdin.flush()
        parent.wait(timeout=30)


def test_tree_cpu_of_a_missing_process_is_unknown():
    # Above Linux's largest pid_max (2**22): no such process, so "unknown", not 0.
    assert process_tree_cpu_seconds(2**22 + 12345) is None
