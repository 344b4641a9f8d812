"""A node router (``engine.actors.node.Router``) for outbound calls: a new channel whose dialled
number the tenant's outbound routes (or emergency numbers) take is given its dial plan.

Order: an emergency number is planned first (nothing may take it elsewhere); otherwise the
``fallback`` router (DIDs, extensions, queues) decides first, and only what it leaves is planned.
A number no route matches is left alone (``None``, as before). A number routes match but that
cannot be dialled is refused through a one-node flow that hangs up with a cause the phone shows:
Blocked -> CALL_REJECTED, AllTrunksFull -> NORMAL_CIRCUIT_CONGESTION, InvalidNumber ->
INVALID_NUMBER_FORMAT. Trunk usage comes from a :class:`engine.routing.usage.TrunkLedger`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from engine.flows.model import Flow, HangupNode
from engine.messages import ChannelCreated, EnterFlow, RoutingMessage
from engine.routing.outbound import (
    AllTrunksFull,
    Blocked,
    DialPlan,
    InvalidNumber,
    OutboundConfig,
    RouteError,
    plan,
    to_route,
)
from engine.routing.usage import TrunkLedger

__all__ = ["outbound_router", "refusal", "REFUSAL_CAUSES"]

REFUSAL_CAUSES: dict[type, str] = {
    Blocked: "CALL_REJECTED",
    AllTrunksFull: "NORMAL_CIRCUIT_CONGESTION",
    InvalidNumber: "INVALID_NUMBER_FORMAT",
}


def refusal(call_id: str, at: float, error: RouteError, cause: str = "") -> EnterFlow:
    """The one-node flow that hangs a refused call up with ``cause`` (default: by error type);
    the call ends "failed" with that cause in its CDR."""
    cause = cause or REFUSAL_CAUSES[type(error)]
    flow = Flow(id=f"outbound-refused-{error.reason}", start="refuse", nodes={"refuse": HangupNode(cause=cause)})
    return EnterFlow(call_id=call_id, at=at, flow_id=flow.id, flow=flow)


def outbound_router(configs: Mapping[str, OutboundConfig], ledger: TrunkLedger, *,
                    fallback: Callable[[ChannelCreated], RoutingMessage | None] | None = None,
                    timeout_s: float = 60.0,
                    allowed_routes: Callable[[ChannelCreated], frozenset[str] | None] | None = None,
                    ) -> Callable[[ChannelCreated], RoutingMessage | None]:
    """``configs`` maps tenants to their outbound routing; ``allowed_routes`` gives a caller's
    class of service (None: every route)."""

    def router(event: ChannelCreated) -> RoutingMessage | None:
        config = configs.get(event.tenant)
        number = event.destination
        emergency = config is not None and number in config.emergency
        if not emergency and fallback is not None:
            decision = fallback(event)
            if decision is not None:
                return decision
        if config is None:
            return None
        allowed = allowed_routes(event) if allowed_routes is not None else None
        result = plan(number, config, ledger.usage(event.tenant), caller_id=event.caller_id,
                      allowed_routes=allowed)
        if isinstance(result, DialPlan):
            return to_route(result, call_id=event.call_id, at=event.at, timeout_s=timeout_s)
        if type(result) in REFUSAL_CAUSES:
            return refusal(event.call_id, event.at, result)
        return None  # NoRoute: not an outside number

    return router
