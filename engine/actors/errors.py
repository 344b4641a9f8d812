"""Typed errors of the actor runtime.

Every error names the actor (kind, id) it is about, so a log line or a test failure says who.
"""

from __future__ import annotations


class ActorError(Exception):
    """Base of every error the actor runtime raises."""


class MailboxFull(ActorError):
    """``tell_nowait`` found the mailbox at capacity (``tell`` would have waited)."""

    def __init__(self, kind: str, actor_id: str, capacity: int) -> None:
        self.kind = kind
        self.actor_id = actor_id
        self.capacity = capacity
        super().__init__(f"mailbox of {kind}:{actor_id} is full ({capacity} messages)")


class ActorNotFound(ActorError):
    """No live actor is registered under (kind, id)."""

    def __init__(self, kind: str, actor_id: str) -> None:
        self.kind = kind
        self.actor_id = actor_id
        super().__init__(f"no actor {kind}:{actor_id}")


class ActorExists(ActorError):
    """``spawn`` was asked for an (kind, id) that is already live."""

    def __init__(self, kind: str, actor_id: str) -> None:
        self.kind = kind
        self.actor_id = actor_id
        super().__init__(f"actor {kind}:{actor_id} already exists")


class AskTimeout(ActorError):
    """``ask`` got no ``Reply`` within its timeout."""

    def __init__(self, kind: str, actor_id: str, request_id: str, timeout: float) -> None:
        self.kind = kind
        self.actor_id = actor_id
        self.request_id = request_id
        self.timeout = timeout
        super().__init__(f"{kind}:{actor_id} did not reply to {request_id} within {timeout} s")


class ActorCrashed(ActorError):
    """The message an ``ask`` sent crashed its actor (it was dead-lettered)."""

    def __init__(self, kind: str, actor_id: str, error: str) -> None:
        self.kind = kind
        self.actor_id = actor_id
        self.error = error
        super().__init__(f"{kind}:{actor_id} crashed on the request: {error}")


class RuntimeClosed(ActorError):
    """The runtime is shutting down (or stopped) and accepts no new external messages."""


class SupervisorEscalation(ActorError):
    """The root supervisor exceeded its restart intensity: the shard gives up (its host restarts it)."""

    def __init__(self, path: str, restarts: int, period_s: float) -> None:
        self.path = path
        self.restarts = restarts
        self.period_s = period_s
        super().__init__(f"supervisor {path} exceeded {restarts} restarts in {period_s} s")
