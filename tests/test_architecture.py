"""Structural promises of the design, checked on the source itself."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["gateway", "governance", "reviews", "sessions", "mcpserver"]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_only_the_pipeline_imports_the_connectors():
    offenders = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith("gateway/connectors/") or rel == "gateway/pipeline.py":
                continue
            if any(
                name == "gateway.connectors" or name.startswith("gateway.connectors.")
                for name in _imports(path)
            ):
                offenders.append(rel)
    assert offenders == [], f"only gateway/pipeline.py may import connectors: {offenders}"


def test_mcp_tools_do_not_touch_models_directly():
    """Tools are thin adapters: they call services and selectors, never the ORM."""
    offenders = []
    for path in (ROOT / "mcpserver" / "tools").glob("*.py"):
        for name in _imports(path):
            if name.endswith(".models") or ".models." in name:
                offenders.append(f"{path.name}: {name}")
    assert offenders == []


def test_the_sessions_app_does_not_take_djangos_label():
    from django.apps import apps

    assert apps.get_app_config("records").name == "sessions"
    assert apps.get_app_config("sessions").name == "django.contrib.sessions"


def test_every_scheduled_task_exists():
    from django.conf import settings

    from gateway.celery import app

    app.loader.import_default_modules()
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        assert entry["task"] in app.tasks, entry["task"]
