"""Settings of the fault suite's processes: production settings with short periodic intervals.

The suite kills and stops pieces and then waits for the system to recover by itself; with the
production beat intervals (60 s) every scenario would wait minutes for a sweep. Only the beat
schedule's intervals change here; everything else comes from the environment as in production.
"""

from gateway.settings import *  # noqa: F403
from gateway.settings import CELERY_BEAT_SCHEDULE

for _entry in CELERY_BEAT_SCHEDULE.values():
    _entry["schedule"] = min(float(_entry["schedule"]), 3.0)
