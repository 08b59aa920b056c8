"""The web process moves what it loaded out of the garbage collector's reach once the application
is built (PORTCULLIS_GC_FREEZE, default on; docs/operations.md, "The garbage collector")."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = "import gc, gateway.asgi; print(gc.get_freeze_count(), len(gc.get_objects()))"


def _frozen(setting: str | None) -> tuple[int, int]:
    env = {k: v for k, v in os.environ.items() if k != "PORTCULLIS_GC_FREEZE"}
    if setting is not None:
        env["PORTCULLIS_GC_FREEZE"] = setting
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return int(out[0]), int(out[1])


@pytest.mark.parametrize("setting", [None, "true"])
def test_the_loaded_application_is_frozen(setting):
    frozen, tracked = _frozen(setting)
    assert frozen > 100_000  # Django, the SDK, the tool registry: all of it
    assert tracked < frozen // 10  # what a collection still walks


def test_it_can_be_turned_off():
    frozen, tracked = _frozen("false")
    assert frozen == 0 and tracked > 100_000
