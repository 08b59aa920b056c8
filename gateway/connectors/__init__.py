"""The connector registry: one module per kind, named by the kind's record (gateway/kinds.py).
Only `gateway.pipeline` may import this package."""

from django.utils.module_loading import import_string

from gateway.connectors.base import Connector, ExecResult, Limits
from gateway.kinds import KINDS

REGISTRY: dict[str, type[Connector]] = {name: import_string(kind.connector) for name, kind in KINDS.items()}
for _name, _cls in REGISTRY.items():
    if _cls.kind != _name:
        raise ImportError(f"{KINDS[_name].connector} says kind {_cls.kind!r}, its record {_name!r}")

__all__ = ["REGISTRY", "Connector", "ExecResult", "Limits"]
