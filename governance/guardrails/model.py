"""The public types of the guardrail engine: `Rule` (normalized conditions) and `Finding`."""

from __future__ import annotations

from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------
# Public types
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    name: str
    input: dict  # normalized input conditions ({} if none)
    output: dict  # normalized output conditions ({} if none)


@dataclass(frozen=True)
class Finding:
    rule: str
    direction: str  # "input" | "output"
    condition: str  # e.g. "sql.deny_statements", "deny_words", "secrets"
    statement: int | None  # 1-based index of the statement in the batch, when it applies
    detail: str  # what in the input/output triggered it; never the rule's pattern

    def as_dict(self) -> dict:
        return {
            "rule": self.rule,
            "direction": self.direction,
            "condition": self.condition,
            "statement": self.statement,
            "detail": self.detail,
        }
