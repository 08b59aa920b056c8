"""The one exec path. Every surface that runs anything against a target comes through here, and
this package is the only importer of the connectors (a test enforces it).

    authorize -> input guardrails -> review gate -> record the session (input first)
      -> run in the bounded pool (read-only when a rule asks) -> output guardrails -> mask
      -> finish the record -> enqueue analysis -> envelope

A package by stage; other code uses the names re-exported here (`from gateway import pipeline`):

* `exec`: `exec_start`, `exec_reviewed` (an approved review's stored input), `exec_cancel`,
  `exec_explain`;
* `dispatch`: the hand-off to this process's pool or an agent queue (the Celery task
  `session_run`), the worker's run and final write, what the sweep resumes;
* `protect`: output guardrails and masking of a result;
* `tools`: upstream MCP tools (`tool_call`, `upstream_tools_list`) and `upstream_finish`, the end
  of every upstream exchange;
* `schema`: `schema_list`; `connections`: settings as the connectors declare them, the test;
* `envelopes`: the agent-facing answers (`exec_envelope`, `tool_envelope`);
* `common`: what the stages share (limits, the block message, the session about to be recorded).

The stages import each other downwards (exec -> tools -> dispatch -> protect -> common), never
through this module.
"""

from gateway.pipeline.common import (
    agent_queue_name,
    block_message,
    limits_for,
    new_session,
    refuse_without_exec,
)
from gateway.pipeline.connections import (
    connection_kinds,
    connection_setting_names,
    connection_test,
    secret_setting_names,
    validate_connection_settings,
)
from gateway.pipeline.dispatch import (
    finish_with_retry,
    recover_open,
    resolve_abandoned_run,
    run_on_agent,
    session_run,
)
from gateway.pipeline.envelopes import exec_envelope, tool_envelope
from gateway.pipeline.exec import exactly_once_possible, exec_cancel, exec_explain, exec_reviewed, exec_start
from gateway.pipeline.schema import schema_list
from gateway.pipeline.tools import (
    cancellable_exchange,
    canonical,
    job_session,
    mask_tool_result,
    session_caller,
    set_list_changed_hook,
    tool_call,
    tool_dispatch,
    tool_text,
    upstream_caller,
    upstream_connection,
    upstream_connector,
    upstream_finish,
    upstream_tools_list,
)
from governance.access import authorize

__all__ = [
    "agent_queue_name",
    "authorize",
    "block_message",
    "cancellable_exchange",
    "canonical",
    "connection_kinds",
    "connection_setting_names",
    "connection_test",
    "exactly_once_possible",
    "exec_cancel",
    "exec_envelope",
    "exec_explain",
    "exec_reviewed",
    "exec_start",
    "finish_with_retry",
    "job_session",
    "limits_for",
    "mask_tool_result",
    "new_session",
    "recover_open",
    "refuse_without_exec",
    "resolve_abandoned_run",
    "run_on_agent",
    "schema_list",
    "secret_setting_names",
    "session_caller",
    "session_run",
    "set_list_changed_hook",
    "tool_call",
    "tool_dispatch",
    "tool_envelope",
    "tool_text",
    "upstream_caller",
    "upstream_connection",
    "upstream_connector",
    "upstream_finish",
    "upstream_tools_list",
    "validate_connection_settings",
]
