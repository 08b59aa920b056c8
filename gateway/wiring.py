"""Start-up wiring: the modules that register something with a lower layer when they load.

A lower layer never imports a higher one; where it must call up, the higher module registers a
function with it at import time, and this module makes sure each of them is imported once the
apps are ready (`gateway.apps` imports it in `ready()`: the one import inside a function the
architecture test allows):

* `gateway.pipeline`: the outbox's `dispatch` delivery (open sessions to agent queues), and
  through `gateway.runner` the lookup of this process's job futures for `sessions.wakeup`;
* `sessions.services`, `sessions.delivery`: the outbox's `analysis`, `event` and `sink` deliveries;
  `sessions.analysis_drain`: that, with a broker, the worker claims the `analysis` rows itself;
* `gateway.metrics_state`: the scrape-time gauges and the review lookup of `gateway.metrics`;
* `governance.services`: how `createsuperuser` makes its user (`UserManager.superuser_factory`);
* `gateway.upstream_protocol`: the contract check an upstream's list_changed announcement triggers
  (`pipeline.set_list_changed_hook`).
"""

from gateway import metrics_state, pipeline, upstream_protocol  # noqa: F401
from governance import services as directory  # noqa: F401
from sessions import analysis_drain, delivery, services  # noqa: F401
