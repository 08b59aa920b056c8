"""One harness for the whole fault suite (about 35 s to start), and a fresh `scenario` per test
that first brings every piece back up."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.faults.checks import Scenario, restore
from tests.faults.harness import make_harness


@pytest.fixture(scope="session")
def h():
    harness = make_harness()
    try:
        harness.start()
        yield harness
    finally:
        keep = os.environ.get("PORTCULLIS_FAULTS_KEEP_LOGS")
        if keep:
            harness.keep_logs(Path(keep))
        harness.close()
        shutil.rmtree(harness.base, ignore_errors=True)


@pytest.fixture
def scenario(h, request):
    restore(h)
    return Scenario(h=h, name=request.node.name, since=h.db_now())
