"""Typed errors of the PostgreSQL adapter. Each maps to one gRPC status code (``code``).

``InvalidArgument`` names the row (``table[tenant/key]``) and the field, so an operator can find
the thing to fix without reading a traceback.
"""

from __future__ import annotations

__all__ = ["StoreError", "NotFound", "AlreadyExists", "InvalidArgument", "Unavailable", "FailedPrecondition"]


class StoreError(Exception):
    #: gRPC status name the API answers with
    code = "INTERNAL"


class NotFound(StoreError):
    code = "NOT_FOUND"

    def __init__(self, row: str) -> None:
        self.row = row
        super().__init__(f"{row}: not found")


class AlreadyExists(StoreError):
    code = "ALREADY_EXISTS"

    def __init__(self, row: str, detail: str = "") -> None:
        self.row = row
        super().__init__(f"{row}: already exists" + (f" ({detail})" if detail else ""))


class InvalidArgument(StoreError):
    code = "INVALID_ARGUMENT"

    def __init__(self, row: str, field: str, message: str) -> None:
        self.row = row
        self.field = field
        self.detail = message
        where = f"{row}.{field}" if field else row
        super().__init__(f"{where}: {message}")


class FailedPrecondition(StoreError):
    """The row refers to something that does not exist (foreign key), or is still referred to."""

    code = "FAILED_PRECONDITION"

    def __init__(self, row: str, message: str) -> None:
        self.row = row
        super().__init__(f"{row}: {message}")


class Unavailable(StoreError):
    """PostgreSQL cannot be reached right now; the caller may retry later."""

    code = "UNAVAILABLE"
