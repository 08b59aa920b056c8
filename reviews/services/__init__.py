"""Reviews: the rules that ask for them, the gate the pipeline calls, and every transition.

    PENDING ──(quorum met)──> APPROVED ──(reviews_execute, once)──> EXECUTED      one-time
       │                         │
       ├──(any reviewer)──> REJECTED            APPROVED ──(revoke)──> REVOKED    JIT
       └──(deadline)──> EXPIRED   <──(deadline)──┘

Each transition is one function here: it locks the review row, refuses a wrong state, writes the
audit log in the same transaction and, on commit, wakes `reviews_wait` in every process and
queues the outbound notifications. Separation of duties: nobody approves their own request
(admins included) unless the org turns that on; decisions over MCP are off unless an admin turns
them on. Quorum: every reviewer group approves, or `min_approvals` distinct people do (`>=`).

A package by responsibility; other code uses the names re-exported here
(`from reviews import services`):

* `rules`: access request rules (`access_rule_create|update|delete|get|list`);
* `gate`: `command_gate`, the pipeline's question before an exec runs, and `active_grant`;
* `creation`: `review_open` (a held-back input), `review_find_identical`, `access_request` (JIT);
* `queries`: who may see and decide (`is_eligible_reviewer`, `may_revoke`, `can_see_input`),
  `review_get`, `review_list`, `review_to_dict`;
* `decisions`: `review_decide` (approve, reject, revoke), `reviews_expire`,
  `review_window_refusal`, `review_changed`;
* `org_settings`: the org's review settings; `common`: what they share.

The modules import each other downwards (decisions -> queries, creation and gate -> rules ->
org_settings -> common), never through this module.
"""

from reviews.services.common import DEFAULT_JIT_SECONDS, MAX_JIT_SECONDS, MAX_LIMIT, NOT_FOUND, TOKEN_SURFACES
from reviews.services.creation import access_request, review_find_identical, review_open
from reviews.services.decisions import review_changed, review_decide, review_window_refusal, reviews_expire
from reviews.services.gate import active_grant, command_gate, input_risk
from reviews.services.org_settings import (
    review_settings,
    review_settings_get,
    review_settings_to_dict,
    review_settings_update,
)
from reviews.services.queries import (
    can_see_input,
    is_eligible_reviewer,
    may_revoke,
    review_get,
    review_list,
    review_reload,
    review_to_dict,
    review_url,
)
from reviews.services.rules import (
    access_rule_create,
    access_rule_delete,
    access_rule_get,
    access_rule_list,
    access_rule_to_dict,
    access_rule_update,
)

__all__ = [
    "DEFAULT_JIT_SECONDS",
    "MAX_JIT_SECONDS",
    "MAX_LIMIT",
    "NOT_FOUND",
    "TOKEN_SURFACES",
    "access_request",
    "access_rule_create",
    "access_rule_delete",
    "access_rule_get",
    "access_rule_list",
    "access_rule_to_dict",
    "access_rule_update",
    "active_grant",
    "can_see_input",
    "command_gate",
    "input_risk",
    "is_eligible_reviewer",
    "may_revoke",
    "review_changed",
    "review_decide",
    "review_find_identical",
    "review_get",
    "review_list",
    "review_open",
    "review_reload",
    "review_settings",
    "review_settings_get",
    "review_settings_to_dict",
    "review_settings_update",
    "review_to_dict",
    "review_url",
    "review_window_refusal",
    "reviews_expire",
]
