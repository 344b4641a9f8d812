"""Typed API errors: gRPC status names, mapped once for every transport.

Rules
1. A handler fails by raising ``ApiError(code, message)``; nothing else reaches a client. Any other
   exception is a bug and is reported as INTERNAL without its details.
2. ``code`` is a gRPC status name (``NOT_FOUND``). NATS and WebSocket carry it as is; HTTP uses the
   Connect protocol's lowercase form (``not_found``) and its HTTP status mapping.
"""

from __future__ import annotations

__all__ = ["ApiError", "CODES", "HTTP_STATUS", "connect_code"]

#: gRPC status names this API uses, with the HTTP status the Connect protocol gives each
HTTP_STATUS: dict[str, int] = {
    "CANCELED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}
CODES = frozenset(HTTP_STATUS)


def connect_code(code: str) -> str:
    return code.lower()


class ApiError(Exception):
    """A request failed with a gRPC status ``code`` and a human ``message``."""

    def __init__(self, code: str, message: str) -> None:
        if code not in CODES:
            code, message = "UNKNOWN", f"{code}: {message}"
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}
