"""Delivery of outbound events (first version: logged only; webhooks and sinks follow)."""

from __future__ import annotations

import logging

log = logging.getLogger("portcullis.events")


def event_enqueue(event: dict) -> None:
    log.info("event %s %s", event["type"], event["id"])
