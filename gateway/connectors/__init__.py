"""The connector registry: one module per kind. Only `gateway.pipeline` may import this package."""

from gateway.connectors.base import Connector, ExecResult, Limits
from gateway.connectors.command import CommandConnector
from gateway.connectors.mcp import MCPConnector
from gateway.connectors.mysql import MySQLConnector
from gateway.connectors.postgres import PostgresConnector
from gateway.connectors.sqlite import SQLiteConnector

REGISTRY: dict[str, type[Connector]] = {
    cls.kind: cls
    for cls in (PostgresConnector, MySQLConnector, SQLiteConnector, CommandConnector, MCPConnector)
}

__all__ = ["REGISTRY", "Connector", "ExecResult", "Limits"]
