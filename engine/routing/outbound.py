"""Outbound routing: which trunks an outside number is dialled through, in which order.

Rule 1: pure. No I/O, no trio, no clock reads; trunk usage arrives as an argument.
Rule 2: ``plan(number, config, usage)`` returns a :class:`DialPlan` or a typed :class:`RouteError`;
        it never raises for a number nobody can route. Bad *configuration* raises
        :class:`OutboundConfigError` when it is built (``OutboundRoute``/``Trunk`` constructors).

Theory of operation
Routes match the dialled number by ``pattern``: either a dial pattern (``_`` then ``X`` any digit,
``Z`` 1-9, ``N`` 2-9, ``[1-5]`` a class, ``.`` one or more of anything, ``!`` zero or more, other
characters literally; e.g. ``_0044XXXXXXXXXX``, ``_00.``) or a regular expression anchored with
``^...$`` (matched in full). Every matching route contributes its trunks; routes are taken in
``priority`` order (lower first, ties by ``route_id``), trunks in the route's own order, each trunk
once (its first route wins). A trunk is skipped when disabled or when ``usage[trunk] >=
max_concurrent`` (0 = unlimited). The attempts carry the number as that route transforms it
(``strip`` leading digits, then ``prepend``) and the caller id after the route's rule (keep,
replace, prefix).

A caller's class of service (``allowed_routes``) limits which routes it may use; a number that
only matches forbidden routes is :class:`Blocked`.

Emergency numbers are never blocked: they bypass the class of service and the trunk limits. The
attempts are every enabled trunk (of the matching routes first, in their order, then the others
in configuration order), trunks with capacity first, then the ones at or over their limit, so an
emergency call takes the first trunk with capacity and, when every trunk is full, any trunk even
over its limit. With no enabled trunk it tries the disabled ones rather than nothing. Only a tenant
with no trunk at all cannot place an emergency call (:class:`NoRoute`). The number is dialled
as entered unless a matching route transforms it.

Failover itself (which causes move on to the next attempt) is the call machine's
(``engine.fsm.call``); :data:`FAILOVER_CAUSES` is the list it uses.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import msgspec

from engine.messages import HangupCause, RouteToExtension, TrunkDial

__all__ = [
    "OutboundConfigError", "CallerIdRule", "OutboundRoute", "Trunk", "EmergencyNumbers",
    "OutboundConfig", "DialPlan", "RouteError", "NoRoute", "AllTrunksFull", "Blocked",
    "InvalidNumber", "plan", "compile_pattern", "FAILOVER_CAUSES", "to_route", "config_from_entities",
]

#: hangup causes of a trunk leg after which the next trunk is tried. Not NO_ANSWER / USER_BUSY's
#: cousins at the far end's own choice (CALL_REJECTED): another carrier would reach the same
#: person. USER_BUSY is included because carriers report a full trunk group as busy.
FAILOVER_CAUSES: frozenset[str] = frozenset({
    HangupCause.USER_BUSY,
    HangupCause.NORMAL_CIRCUIT_CONGESTION,
    HangupCause.SWITCH_CONGESTION,
    HangupCause.NO_ROUTE_DESTINATION,
    HangupCause.GATEWAY_DOWN,
    HangupCause.INVALID_GATEWAY,
    HangupCause.NORMAL_TEMPORARY_FAILURE,
    "DESTINATION_OUT_OF_ORDER",
    "NETWORK_OUT_OF_ORDER",
    "NO_ROUTE_TRANSIT_NET",
})

_NUMBER = re.compile(r"^\+?[0-9*#]{1,32}$")
_GATEWAY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_MAX_PATTERN = 200


class OutboundConfigError(ValueError):
    """A route, trunk or emergency list that cannot work (bad pattern, gateway name...)."""

    def __init__(self, what: str, field: str, problem: str) -> None:
        super().__init__(f"{what}: {field}: {problem}")
        self.what, self.field, self.problem = what, field, problem


@functools.lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A dial pattern (``_...``) or an anchored regex (``^...$``) -> compiled regex (fullmatch).

    Raises :class:`OutboundConfigError` for anything else (an unanchored regex would match more
    than the administrator meant; a literal number is written without ``_``)."""
    if not pattern or len(pattern) > _MAX_PATTERN:
        raise OutboundConfigError("route", "pattern", f"1 to {_MAX_PATTERN} characters")
    if pattern.startswith("^"):
        if not pattern.endswith("$"):
            raise OutboundConfigError("route", "pattern", f"a regex must be anchored ^...$: {pattern!r}")
        try:
            return re.compile(pattern)
        except re.error as exc:
            raise OutboundConfigError("route", "pattern", f"bad regex ({exc})") from None
    if not pattern.startswith("_"):
        if not _NUMBER.match(pattern):
            raise OutboundConfigError("route", "pattern", f"a number, _dial-pattern or ^regex$: {pattern!r}")
        return re.compile(re.escape(pattern))
    out, i, body = [], 0, pattern[1:]
    while i < len(body):
        c = body[i]
        if c == "X":
            out.append("[0-9]")
        elif c == "Z":
            out.append("[1-9]")
        elif c == "N":
            out.append("[2-9]")
        elif c == ".":
            out.append(".+")
        elif c == "!":
            out.append(".*")
        elif c == "[":
            j = body.find("]", i)
            cls = body[i + 1:j] if j > 0 else ""
            if j < 0 or not cls or not re.fullmatch(r"[0-9]([0-9-]*[0-9])?", cls):
                raise OutboundConfigError("route", "pattern", f"bad class in {pattern!r} (e.g. [1-5])")
            out.append(f"[{cls}]")
            i = j
        elif c in "0123456789*#+":
            out.append(re.escape(c))
        else:
            raise OutboundConfigError("route", "pattern", f"unexpected {c!r} in dial pattern {pattern!r}")
        i += 1
    if not out:
        raise OutboundConfigError("route", "pattern", "an empty dial pattern")
    return re.compile("".join(out))


class CallerIdRule(msgspec.Struct, frozen=True, kw_only=True):
    """What the far end sees: the caller's own id (keep), a fixed one (replace: the company's main
    number), or the caller's id with a prefix (prefix: e.g. a DID block's leading digits)."""

    mode: Literal["keep", "replace", "prefix"] = "keep"
    value: str = ""

    def apply(self, caller_id: str) -> str:
        if self.mode == "replace":
            return self.value
        if self.mode == "prefix":
            return self.value + caller_id
        return caller_id


class Trunk(msgspec.Struct, frozen=True, kw_only=True):
    trunk_id: str
    #: the FreeSWITCH sofia gateway name (dialled as sofia/gateway/<gateway>/<number>)
    gateway: str
    #: concurrent calls allowed on the trunk; 0 = unlimited
    max_concurrent: int = 0
    enabled: bool = True

    def __post_init__(self) -> None:
        if not self.trunk_id:
            raise OutboundConfigError("trunk", "trunk_id", "must not be empty")
        if not _GATEWAY.match(self.gateway):
            raise OutboundConfigError(f"trunk {self.trunk_id}", "gateway",
                                      f"letters, digits, '.', '_' or '-': {self.gateway!r}")
        if self.max_concurrent < 0:
            raise OutboundConfigError(f"trunk {self.trunk_id}", "max_concurrent", "0 (unlimited) or more")

    def has_capacity(self, used: int) -> bool:
        return self.max_concurrent == 0 or used < self.max_concurrent


class OutboundRoute(msgspec.Struct, frozen=True, kw_only=True):
    route_id: str
    pattern: str
    #: lower is tried first
    priority: int = 100
    trunks: tuple[str, ...] = ()
    strip: int = 0
    prepend: str = ""
    caller_id: CallerIdRule = CallerIdRule()

    def __post_init__(self) -> None:
        compile_pattern(self.pattern)
        if not self.trunks:
            raise OutboundConfigError(f"route {self.route_id}", "trunks", "at least one trunk")
        if self.strip < 0:
            raise OutboundConfigError(f"route {self.route_id}", "strip", "0 or more")
        if self.prepend and not re.fullmatch(r"\+?[0-9*#]*", self.prepend):
            raise OutboundConfigError(f"route {self.route_id}", "prepend", f"digits: {self.prepend!r}")

    def matches(self, number: str) -> bool:
        return compile_pattern(self.pattern).fullmatch(number) is not None

    def transform(self, number: str) -> str:
        return self.prepend + number[self.strip:]


class EmergencyNumbers(msgspec.Struct, frozen=True, kw_only=True):
    """Numbers that are always allowed (see the module docstring: no limit, no class of service)."""

    numbers: frozenset[str] = frozenset({"112", "911", "999", "000", "110"})

    def __post_init__(self) -> None:
        for n in self.numbers:
            if not _NUMBER.match(n):
                raise OutboundConfigError("emergency numbers", "numbers", f"not a number: {n!r}")

    def __contains__(self, number: object) -> bool:
        return number in self.numbers


class OutboundConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One tenant's outbound routing."""

    routes: tuple[OutboundRoute, ...] = ()
    trunks: tuple[Trunk, ...] = ()
    emergency: EmergencyNumbers = EmergencyNumbers()

    def __post_init__(self) -> None:
        ids = [t.trunk_id for t in self.trunks]
        if len(set(ids)) != len(ids):
            raise OutboundConfigError("outbound config", "trunks", "duplicate trunk_id")
        for r in self.routes:
            for t in r.trunks:
                if t not in ids:
                    raise OutboundConfigError(f"route {r.route_id}", "trunks", f"unknown trunk {t!r}")

    def trunk(self, trunk_id: str) -> Trunk:
        for t in self.trunks:
            if t.trunk_id == trunk_id:
                return t
        raise KeyError(trunk_id)


class DialPlan(msgspec.Struct, frozen=True, kw_only=True):
    #: the number as the caller dialled it
    number: str
    attempts: tuple[TrunkDial, ...]
    emergency: bool = False


class RouteError(msgspec.Struct, frozen=True, kw_only=True):
    number: str

    @property
    def reason(self) -> str:
        return type(self).__name__


class InvalidNumber(RouteError, frozen=True, kw_only=True):
    """Not a dialable number (digits, * # and a leading +, 1 to 32)."""


class NoRoute(RouteError, frozen=True, kw_only=True):
    """No route matches the number (or, for an emergency number, the tenant has no trunk)."""


class Blocked(RouteError, frozen=True, kw_only=True):
    """Routes match, but the caller's class of service allows none of them."""

    routes: tuple[str, ...] = ()


class AllTrunksFull(RouteError, frozen=True, kw_only=True):
    """Routes match, but each of their trunks is disabled or at its concurrent-call limit."""

    trunks: tuple[str, ...] = ()


def _ordered(routes: Iterable[OutboundRoute]) -> list[OutboundRoute]:
    return sorted(routes, key=lambda r: (r.priority, r.route_id))


def plan(number: str, config: OutboundConfig, usage: Mapping[str, int], *, caller_id: str = "",
         allowed_routes: frozenset[str] | None = None) -> DialPlan | RouteError:
    """Where ``number`` goes: the ordered trunk attempts, or why it cannot go anywhere.

    ``usage`` maps trunk ids to their live calls (missing = 0); ``allowed_routes`` None = all."""
    if not _NUMBER.match(number):
        return InvalidNumber(number=number)
    matching = [r for r in _ordered(config.routes) if r.matches(number)]
    if number in config.emergency:
        return _emergency(number, config, usage, matching, caller_id)
    if not matching:
        return NoRoute(number=number)
    if allowed_routes is not None:
        permitted = [r for r in matching if r.route_id in allowed_routes]
        if not permitted:
            return Blocked(number=number, routes=tuple(r.route_id for r in matching))
        matching = permitted
    attempts: list[TrunkDial] = []
    seen: set[str] = set()
    for route in matching:
        for trunk_id in route.trunks:
            if trunk_id in seen:
                continue
            seen.add(trunk_id)
            trunk = config.trunk(trunk_id)
            if trunk.enabled and trunk.has_capacity(usage.get(trunk_id, 0)):
                attempts.append(TrunkDial(trunk_id=trunk_id, gateway=trunk.gateway,
                                          number=route.transform(number),
                                          caller_id=route.caller_id.apply(caller_id)))
    if not attempts:
        return AllTrunksFull(number=number, trunks=tuple(sorted(seen)))
    return DialPlan(number=number, attempts=tuple(attempts))


def _emergency(number: str, config: OutboundConfig, usage: Mapping[str, int],
               matching: list[OutboundRoute], caller_id: str) -> DialPlan | RouteError:
    route_of: dict[str, OutboundRoute] = {}
    for route in matching:
        for trunk_id in route.trunks:
            route_of.setdefault(trunk_id, route)
    order = list(route_of) + [t.trunk_id for t in config.trunks if t.trunk_id not in route_of]
    trunks = [config.trunk(t) for t in order]
    enabled = [t for t in trunks if t.enabled] or trunks
    if not enabled:
        return NoRoute(number=number)
    free = [t for t in enabled if t.has_capacity(usage.get(t.trunk_id, 0))]
    full = [t for t in enabled if not t.has_capacity(usage.get(t.trunk_id, 0))]
    attempts = []
    for t in free + full:
        via = route_of.get(t.trunk_id)
        attempts.append(TrunkDial(
            trunk_id=t.trunk_id, gateway=t.gateway,
            number=via.transform(number) if via else number,
            caller_id=via.caller_id.apply(caller_id) if via else caller_id))
    return DialPlan(number=number, attempts=tuple(attempts), emergency=True)


def config_from_entities(trunks: Iterable[Any], routes: Iterable[Any],
                         emergency: EmergencyNumbers | None = None) -> OutboundConfig:
    """A tenant's OutboundConfig from its stored rows (``adapters.postgres.config.Trunk`` and
    ``OutboundRoute``, read by attribute so the engine does not import the adapter).

    The FreeSWITCH gateway of a trunk is named after the trunk (``trunk_id``); ``max_channels`` is
    its limit. A stored pattern that is neither a dial pattern (``_``) nor anchored is a regex that
    must match in full, so it is anchored here. A route's caller-id rule is its ``caller_id_mode`` /
    ``caller_id_value`` (keep when the row has none)."""
    out_trunks = tuple(Trunk(trunk_id=t.trunk_id, gateway=t.trunk_id,
                             max_concurrent=t.max_channels, enabled=t.enabled)
                       for t in trunks)
    out_routes = []
    for r in routes:
        pattern: str = r.pattern
        if not pattern.startswith(("_", "^")) and not _NUMBER.match(pattern):
            pattern = f"^(?:{pattern})$"
        elif pattern.startswith("^") and not pattern.endswith("$"):
            pattern = f"^(?:{pattern[1:]})$"
        out_routes.append(OutboundRoute(
            route_id=r.route_id, pattern=pattern, priority=r.priority,
            trunks=tuple(r.trunks), strip=r.strip, prepend=r.prepend,
            caller_id=CallerIdRule(mode=getattr(r, "caller_id_mode", "keep"), value=getattr(r, "caller_id_value", ""))))
    return OutboundConfig(trunks=out_trunks, routes=tuple(out_routes), emergency=emergency or EmergencyNumbers())


def to_route(dial_plan: DialPlan, *, call_id: str, at: float, timeout_s: float = 60.0) -> RouteToExtension:
    """The message that makes a call dial this plan (``engine.fsm.call`` does the failover)."""
    return RouteToExtension(call_id=call_id, at=at, target=dial_plan.number, timeout_s=timeout_s,
                            trunks=dial_plan.attempts)
