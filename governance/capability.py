"""The exec side of a token's capability ceiling (the role side is `governance.policy`).

A `read_only` token runs only statements that read. The pipeline adds one synthetic guardrail
rule with `sql.read_only` to the connection's rules, so the input is refused by exactly the
parsed-SQL check a read-only guardrail rule uses (blocked, recorded, audited), and what passes is
run in a read-only transaction (`guardrails.requires_read_only` sees the rule). Command
connections have no such check, so a read-only token may not run anything on them.
"""

from __future__ import annotations

from governance import guardrails

# Not a valid guardrail rule name (spaces and a colon), so no admin rule can shadow it.
READ_ONLY_RULE = "token capability: read_only"

_RULE = guardrails.Rule(name=READ_ONLY_RULE, input={"sql": {"read_only": True}}, output={})


def apply_exec_ceiling(actor, kind: str, text: str, rules: list, findings: list) -> tuple[list, list]:
    """(rules, findings) for an exec by `actor` on a connection of `kind`, with the token's ceiling
    applied. Unchanged unless the actor's token is read-only."""
    if not actor.read_only:
        return rules, findings
    dialect = guardrails.DIALECTS.get(kind)
    if dialect is None:
        extra = [
            guardrails.Finding(
                READ_ONLY_RULE,
                "input",
                "capability.read_only",
                None,
                "a read-only token cannot run commands; only SQL reads",
            )
        ]
    else:
        extra = guardrails.evaluate_input([_RULE], text, dialect=dialect)
    return [*rules, _RULE], [*findings, *extra]
