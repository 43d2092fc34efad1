"""Errors a client caused or must know about, in protocol-neutral terms.

The data plane raises these; each protocol adapter maps `status` to its own code (a gRPC
status, an HTTP status). Messages name the field and the limit, so a client can fix its request
without reading server logs, and quote client input only through `quote`, never unbounded.
"""
from __future__ import annotations

QUOTE_LIMIT = 100   # characters of client input a message may echo


def quote(text: object, limit: int = QUOTE_LIMIT) -> str:
    """repr() of client input, cut to `limit` characters (a 1 MB model name must not come back)."""
    text = str(text)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"… ({len(text):,} characters)"


class ServiceError(Exception):
    status = "INTERNAL"       # the gRPC status name; adapters map it (HTTP: see server/http.py)

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    status = "INVALID_ARGUMENT"


class NotFound(ServiceError):
    status = "NOT_FOUND"


class ResourceExhausted(ServiceError):
    status = "RESOURCE_EXHAUSTED"


class Unavailable(ServiceError):
    status = "UNAVAILABLE"


class DeadlineExceeded(ServiceError):
    status = "DEADLINE_EXCEEDED"


class FailedPrecondition(ServiceError):
    status = "FAILED_PRECONDITION"


class Unimplemented(ServiceError):
    status = "UNIMPLEMENTED"
