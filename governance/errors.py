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


class ReviewRequired(PortcullisError):
    code = "review_required"
