"""One error model: each failure carries what every face needs to answer it.

An `AuditError` knows its HTTP status and reason, its CLI exit status and a message fit
to show the person asking (no server paths, no stack traces). The HTTP layer and the CLI
each catch `AuditError` once; the pages show `message`. A new error is one subclass here
(or beside the code that raises it), nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping


class AuditError(Exception):
    """A request that cannot be done; `message` is fit to show the person asking."""

    status = 500
    reason = "InternalError"
    exit_code = 2

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})


class BadRequestError(AuditError, ValueError):
    """The input is not valid; the message names what and how to fix it."""

    status = 400
    reason = "BadRequest"


class UnauthorizedError(AuditError, PermissionError):
    """No valid credential was presented; the message says which check failed."""

    status = 401
    reason = "Unauthorized"


class ForbiddenError(AuditError, PermissionError):
    """The principal may not do this; the message says why, without leaking data."""

    status = 403
    reason = "Forbidden"


class NotFoundError(AuditError, LookupError):
    """No such thing, or not one the caller may see (the two look the same on purpose)."""

    status = 404
    reason = "NotFound"


class ConflictError(AuditError):
    """The thing exists but is in a state that does not allow this."""

    status = 409
    reason = "Conflict"


class GoneError(AuditError):
    """The thing existed but is gone for good (an expired export file)."""

    status = 410
    reason = "Gone"


class TooManyRequestsError(AuditError):
    """The caller is over a limit; `Retry-After` says when to try again."""

    status = 429
    reason = "TooManyRequests"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class ConfigError(AuditError, ValueError):
    """A setting has a value the portal cannot use; the message names the variable."""


class UsageError(AuditError):
    """A command line that cannot be carried out as given."""
