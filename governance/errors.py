"""The one domain-exception hierarchy. Services raise these; each surface translates them once.

Messages are stable strings meant for the caller (an agent reads them); they never contain a
secret, a guardrail pattern, or whether an object the caller may not see exists.
"""


class PortcullisError(Exception):
    """Base of every domain error."""

    code = "error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotFound(PortcullisError):
    """Missing, or not visible to this actor: the same answer, so existence never leaks."""

    code = "not_found"


class PolicyDenied(PortcullisError):
    """The actor may see the object but may not do this to it (or lacks the role)."""

    code = "denied"


class InvalidInput(PortcullisError):
    code = "invalid"


class Conflict(PortcullisError):
    code = "conflict"


class ConnectorError(PortcullisError):
    """The target could not be reached or refused the connection (not: the statement failed)."""

    code = "connector"


class GuardrailBlocked(PortcullisError):
    """Raised by the guardrail step; carries the rule name, never its pattern."""

    code = "blocked"

    def __init__(self, message: str, *, rule: str):
        super().__init__(message)
        self.rule = rule


class AffectedRowsExceeded(GuardrailBlocked):
    """A write touched more rows than a guardrail's `max_affected_rows`: the connector rolled it
    back, so the target is as it was. The session is recorded as blocked by that rule."""

    def __init__(self, *, rule: str, ceiling: int, touched: int):
        super().__init__(
            f"the statement changed {touched} rows, more than the {ceiling} that guardrail {rule} allows; "
            "it was rolled back and nothing changed",
            rule=rule,
        )
        self.ceiling = ceiling
        self.touched = touched


class ReviewRequired(PortcullisError):
    code = "review_required"
