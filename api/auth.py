"""Who is calling, what may they do, how often, and what we remember of it.

Rules
1. A caller is a ``Principal`` taken from a JWT bearer token (PyJWT): ``tenant`` and ``sub`` are
   required claims, ``roles`` a list of ``admin`` / ``supervisor`` / ``agent``, ``agent_id``
   optional (defaults to ``sub``). ``exp`` is required. A bad token is UNAUTHENTICATED, never a
   crash, and the reason stays in the audit log, not in the reply.
2. The tenant comes from the token and only from it: no request can name another tenant.
3. Rate limit: one token bucket per token (keyed by ``jti`` when present, else the token's hash);
   an empty bucket is RESOURCE_EXHAUSTED. Buckets are forgotten LRU-style (bounded memory).
4. Audit: every admin action (allowed or not) and every denied request produce one
   ``AuditRecord``; sinks are plain non-blocking callables.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

import jwt
import msgspec
from jwt.types import Options

from api.errors import ApiError

__all__ = [
    "ROLES", "Principal", "Authenticator", "TokenBucket", "RateLimiter", "AuditRecord", "AuditLog",
    "issue_token",
]

ROLES = ("admin", "supervisor", "agent")


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    subject: str
    roles: frozenset[str]
    agent_id: str = ""
    #: rate-limit key (jti or a hash of the token)
    key: str = ""

    def has(self, *roles: str) -> bool:
        return not self.roles.isdisjoint(roles)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def sees_tenant(self) -> bool:
        """Admins and supervisors see the whole tenant; agents see what is theirs."""
        return self.has("admin", "supervisor")


def issue_token(secret: str | bytes, *, tenant: str, sub: str, roles: Iterable[str],
                agent_id: str = "", ttl_s: float = 3600, algorithm: str = "HS256",
                issuer: str = "callengine", audience: str = "callengine", **claims: Any) -> str:
    """A signed token (for tests, demos and the bench; production tokens come from the IdP)."""
    now = int(time.time())
    payload: dict[str, Any] = {"tenant": tenant, "sub": sub, "roles": list(roles), "iat": now,
                               "exp": now + int(ttl_s), "iss": issuer, "aud": audience, **claims}
    if agent_id:
        payload["agent_id"] = agent_id
    return jwt.encode(payload, secret, algorithm=algorithm)


class Authenticator:
    """Verifies bearer tokens. ``key`` is the HMAC secret or the public key (PEM) for RS/ES."""

    def __init__(self, key: str | bytes, *, algorithms: Iterable[str] = ("HS256",),
                 issuer: str | None = "callengine", audience: str | None = "callengine",
                 leeway_s: float = 5.0, cache_size: int = 4096) -> None:
        self._key = key
        self._algorithms = list(algorithms)
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_s
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._cache_size = cache_size

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise ApiError("UNAUTHENTICATED", "a bearer token is required")
        cached = self._cache.get(token)
        if cached is not None and cached[1] > time.time():
            self._cache.move_to_end(token)
            return cached[0]
        options: Options = {"require": ["exp", "sub", "tenant"]}
        try:
            claims = jwt.decode(token, self._key, algorithms=self._algorithms, issuer=self._issuer,
                                audience=self._audience, leeway=self._leeway, options=options)
        except jwt.ExpiredSignatureError:
            raise ApiError("UNAUTHENTICATED", "token expired") from None
        except jwt.PyJWTError:
            raise ApiError("UNAUTHENTICATED", "invalid token") from None
        tenant, sub, roles = claims.get("tenant"), claims.get("sub"), claims.get("roles", [])
        if not isinstance(tenant, str) or not tenant or not isinstance(sub, str):
            raise ApiError("UNAUTHENTICATED", "token lacks tenant or subject")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise ApiError("UNAUTHENTICATED", "roles must be a list of strings")
        agent_id = claims.get("agent_id") or sub
        key = str(claims.get("jti") or hashlib.sha256(token.encode()).hexdigest()[:32])
        principal = Principal(tenant=tenant, subject=sub, roles=frozenset(r for r in roles if r in ROLES),
                              agent_id=str(agent_id), key=key)
        self._cache[token] = (principal, float(claims["exp"]))
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return principal


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` banked."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


class RateLimiter:
    """One bucket per principal key; ``rate <= 0`` disables limiting."""

    def __init__(self, rate: float = 50.0, burst: float = 100.0, *, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._max_keys = max_keys
        self.refused = 0

    def check(self, principal: Principal) -> None:
        if self.rate <= 0:
            return
        now = self._clock()
        bucket = self._buckets.get(principal.key)
        if bucket is None:
            bucket = self._buckets[principal.key] = TokenBucket(self.rate, self.burst, now)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(principal.key)
        if not bucket.take(now):
            self.refused += 1
            raise ApiError("RESOURCE_EXHAUSTED", f"rate limit: {self.rate:g} requests/s, burst {self.burst:g}")


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True):
    at: float
    tenant: str
    subject: str
    roles: tuple[str, ...]
    method: str
    transport: str
    #: "OK" or the gRPC status of the refusal/failure
    outcome: str
    message: str = ""
    #: the request as received (admin actions), or "" for denied requests
    request: str = ""


class AuditLog:
    """Keeps the last ``keep`` records and hands each to the sinks (non-blocking callables)."""

    def __init__(self, keep: int = 10_000, sinks: Iterable[Callable[[AuditRecord], None]] = ()) -> None:
        self.records: deque[AuditRecord] = deque(maxlen=keep)
        self.sinks = list(sinks)
        self.count = 0

    def record(self, record: AuditRecord) -> None:
        self.count += 1
        self.records.append(record)
        for sink in self.sinks:
            try:
                sink(record)
            except Exception:  # an audit sink must not fail the request
                pass

    def for_tenant(self, tenant: str) -> list[AuditRecord]:
        return [r for r in self.records if r.tenant == tenant]
