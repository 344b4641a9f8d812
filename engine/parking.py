"""Parking slots and the "who rings where" view for directed and group pickup (#10 part 4).

Rule 1: pure: no I/O, no trio, no clock reads; state changes only through the methods below.
Rule 2: a slot belongs to at most one call per tenant; a taken slot is a typed error
        (``SlotTaken``), never a silent second park.
Rule 3: both structures are the node's *view*, fed from the CTI events the call machines already
        emit (``observe``), so they need no actor of their own and can be rebuilt from the event
        stream; the call machine stays the authority (a stale view gives a refused Pickup, never a
        wrong connection).

Theory of operation
The API claims a slot (``ParkingLot.claim``: the requested one, or the lowest free one in the
tenant's range) before it sends ``Park(slot=...)`` to the call, and the lot frees it when it sees
that call's CALL_PICKED_UP or CALL_ENDED, or a CALL_PARK_TIMEOUT (the call left the slot). Pickup by
slot asks the lot which call is parked there (``call_in``).

``RingingView`` follows CALL_RINGING / CALL_ANSWERED / CALL_PICKED_UP / CALL_PARKED / CALL_ENDED to
know which extensions each call is ringing; with the tenant's pickup groups it answers "which call
does a directed pickup of extension X take" and "which call does a group pickup by Y take" (the
oldest ringing call at a member of Y's group, ties by call id).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.actors.ports import CtiPort

__all__ = ["ParkingError", "SlotTaken", "NoFreeSlot", "BadSlot", "ParkingLot", "RingingView", "ParkingViews",
           "ParkingCti", "FeatureCodes", "pickup_router"]


class ParkingError(Exception):
    """A parking request that cannot be served; ``code`` is the API error code."""

    code = "FAILED_PRECONDITION"


class SlotTaken(ParkingError):
    code = "ALREADY_EXISTS"

    def __init__(self, tenant: str, slot: str, call_id: str) -> None:
        super().__init__(f"park slot {slot} of tenant {tenant} is taken by call {call_id}")
        self.tenant, self.slot, self.call_id = tenant, slot, call_id


class NoFreeSlot(ParkingError):
    code = "RESOURCE_EXHAUSTED"

    def __init__(self, tenant: str) -> None:
        super().__init__(f"every park slot of tenant {tenant} is taken")
        self.tenant = tenant


class BadSlot(ParkingError):
    code = "INVALID_ARGUMENT"

    def __init__(self, tenant: str, slot: str, first: int, last: int) -> None:
        super().__init__(f"park slot {slot!r} of tenant {tenant} is not in {first}..{last}")
        self.tenant, self.slot = tenant, slot


def _get(event: Any, name: str) -> Any:
    """A field of a CTI event: a dict, a typed api.events struct, or the machines' CtiEvent (whose
    extra fields sit in ``data``)."""
    if isinstance(event, Mapping):
        value = event.get(name)
        data = event.get("data")
    else:
        value = getattr(event, name, None)
        data = getattr(event, "data", None)
    if value in (None, "") and isinstance(data, Mapping):
        value = data.get(name)
    return value


def _field(event: Any, name: str) -> str:
    return str(_get(event, name) or "")


def _kind(event: Any) -> str:
    return _field(event, "type") or _field(event, "name") or type(event).__name__


class ParkingLot:
    """Park slots per tenant: numbered ``first..last`` (defaults 701..799, as on most PBXs)."""

    def __init__(self, first: int = 701, last: int = 799) -> None:
        if not 0 <= first <= last:
            raise ValueError(f"park slot range {first}..{last} is empty")
        self.first, self.last = first, last
        self._slots: dict[tuple[str, str], str] = {}  # (tenant, slot) -> call id
        self._by_call: dict[tuple[str, str], str] = {}  # (tenant, call id) -> slot

    def claim(self, tenant: str, call_id: str, slot: str = "") -> str:
        """Reserve ``slot`` (or the lowest free one) for ``call_id``; the same call claiming again
        gets its slot back (an API retry is idempotent)."""
        held = self._by_call.get((tenant, call_id))
        if held is not None and (not slot or slot == held):
            return held
        if slot:
            if not slot.isdigit() or not self.first <= int(slot) <= self.last:
                raise BadSlot(tenant, slot, self.first, self.last)
            owner = self._slots.get((tenant, slot))
            if owner is not None and owner != call_id:
                raise SlotTaken(tenant, slot, owner)
        else:
            slot = next((str(n) for n in range(self.first, self.last + 1)
                         if (tenant, str(n)) not in self._slots), "")
            if not slot:
                raise NoFreeSlot(tenant)
        if held is not None:
            self.release(tenant, call_id)
        self._slots[(tenant, slot)] = call_id
        self._by_call[(tenant, call_id)] = slot
        return slot

    def release(self, tenant: str, call_id: str) -> str:
        """Free the call's slot; returns it ("" when the call held none)."""
        slot = self._by_call.pop((tenant, call_id), "")
        if slot:
            self._slots.pop((tenant, slot), None)
        return slot

    def call_in(self, tenant: str, slot: str) -> str:
        """The call parked in ``slot`` ("" when free)."""
        return self._slots.get((tenant, slot), "")

    def slots(self, tenant: str) -> dict[str, str]:
        return {s: c for (t, s), c in sorted(self._slots.items()) if t == tenant}

    def observe(self, event: Any) -> None:
        """Follow a CTI event (typed or a dict with ``type``): a call that left its slot frees it."""
        if _kind(event) in ("CALL_PICKED_UP", "CALL_ENDED", "CALL_PARK_TIMEOUT", "CallPickedUp",
                            "CallEnded", "CallParkTimeout"):
            self.release(_field(event, "tenant"), _field(event, "call_id"))


class RingingView:
    """Which extensions each call rings, per tenant, and the tenant's pickup groups."""

    def __init__(self, groups: Mapping[str, Mapping[str, Iterable[str]]] | None = None) -> None:
        #: tenant -> group -> member extensions
        self.groups: dict[str, dict[str, frozenset[str]]] = {}
        self._ringing: dict[tuple[str, str], dict[str, float]] = {}  # (tenant, call) -> ext -> since
        for tenant, by_group in (groups or {}).items():
            self.set_groups(tenant, by_group)

    def set_groups(self, tenant: str, groups: Mapping[str, Iterable[str]]) -> None:
        self.groups[tenant] = {g: frozenset(m) for g, m in groups.items()}

    def observe(self, event: Any) -> None:
        kind = _kind(event)
        key = (_field(event, "tenant"), _field(event, "call_id"))
        if kind in ("CALL_RINGING", "CallRinging"):
            target = _field(event, "target")
            if target:
                self._ringing.setdefault(key, {}).setdefault(target, float(_get(event, "at") or 0.0))
        elif kind in ("CALL_ANSWERED", "CALL_PICKED_UP", "CALL_PARKED", "CALL_ENDED", "CALL_TRANSFERRED",
                      "CallAnswered", "CallPickedUp", "CallParked", "CallEnded", "CallTransferred"):
            # the call stopped ringing those extensions (a pickup's own ring arrives as CALL_RINGING
            # only if the machine announces it; the picker is never a pickup candidate)
            self._ringing.pop(key, None)

    def ringing(self, tenant: str, extension: str) -> list[str]:
        """Calls ringing ``extension``, oldest first (ties by call id)."""
        found = [(exts[extension], call) for (t, call), exts in self._ringing.items()
                 if t == tenant and extension in exts]
        return [call for _, call in sorted(found)]

    def directed(self, tenant: str, extension: str) -> str:
        """The call a directed pickup of ``extension`` takes ("" when it rings nothing)."""
        calls = self.ringing(tenant, extension)
        return calls[0] if calls else ""

    def group_of(self, tenant: str, extension: str) -> list[str]:
        return sorted(g for g, members in self.groups.get(tenant, {}).items() if extension in members)

    def group(self, tenant: str, picker: str) -> tuple[str, str]:
        """The (call, ringing extension) a group pickup by ``picker`` takes: the oldest call ringing
        another member of any of the picker's groups; ("", "") when none."""
        members: set[str] = set()
        for g in self.group_of(tenant, picker):
            members |= self.groups[tenant][g]
        members.discard(picker)
        best: tuple[float, str, str] | None = None
        for (t, call), exts in self._ringing.items():
            if t != tenant:
                continue
            for ext, since in exts.items():
                if ext in members and (best is None or (since, call, ext) < best):
                    best = (since, call, ext)
        return (best[1], best[2]) if best else ("", "")


class ParkingViews:
    """The node's lot and ringing view together, as the API uses them (``Api.parking``).

    ``groups_of(tenant) -> {group: member extensions}`` is read at each group pickup (the live
    configuration: ``callengine run`` reads the extensions' ``pickup_groups``), so a group changed
    while the node runs applies to the next pickup."""

    def __init__(self, lot: ParkingLot | None = None, ringing: RingingView | None = None,
                 groups_of: Callable[[str], Mapping[str, Iterable[str]]] | None = None) -> None:
        self.lot = lot if lot is not None else ParkingLot()
        self.ringing = ringing if ringing is not None else RingingView()
        self.groups_of = groups_of

    def observe(self, event: Any) -> None:
        self.lot.observe(event)
        self.ringing.observe(event)

    def group(self, tenant: str, picker: str) -> tuple[str, str]:
        if self.groups_of is not None:
            self.ringing.set_groups(tenant, self.groups_of(tenant))
        return self.ringing.group(tenant, picker)


class ParkingCti:
    """A ``CtiPort`` that feeds the views and passes every event on to ``inner`` (as
    ``engine.routing.usage.LedgerCti`` does for the trunk ledger)."""

    def __init__(self, views: ParkingViews, inner: CtiPort) -> None:
        self.views = views
        self.inner = inner

    def publish(self, event: Any) -> None:
        self.views.observe(event)
        self.inner.publish(event)


class FeatureCodes:
    """What a phone dials to pick a call up: ``directed_prefix`` + an extension (``**1001``),
    ``group`` (``*8``), or a park slot's number (``701``) when a call is parked there."""

    def __init__(self, directed_prefix: str = "**", group: str = "*8") -> None:
        if not directed_prefix or not group or group.startswith(directed_prefix):
            raise ValueError(f"feature codes must be non-empty and distinct: {directed_prefix!r}, {group!r}")
        self.directed_prefix, self.group = directed_prefix, group


def pickup_router(views: ParkingViews, fallback: Callable[[Any], Any] | None,
                  is_internal: Callable[[str, str], bool], codes: FeatureCodes | None = None,
                  timeout_s: float = 5.0) -> Callable[[Any], Any]:
    """A node router in front of ``fallback``: a call from one of the tenant's own phones
    (``is_internal(tenant, caller)``; an outside caller never picks anything up) dialling a pickup
    code becomes ``RouteToPickup`` (docs/parking.md). A code with nothing to take routes to
    ``target_call=""`` (the phone is hung up at once); a slot number with nothing parked in it,
    and every other number, go to ``fallback``."""
    from engine.messages import RouteToPickup

    codes = codes or FeatureCodes()

    def route(event: Any) -> Any:
        dest = str(getattr(event, "destination", "") or "")
        tenant = str(getattr(event, "tenant", "") or "default")
        picker = str(getattr(event, "caller_id", "") or "")
        kind = ""
        call, target, slot = "", "", ""
        if dest == codes.group:
            kind = "group"
            call, target = views.group(tenant, picker)
        elif dest.startswith(codes.directed_prefix) and len(dest) > len(codes.directed_prefix):
            kind, target = "directed", dest[len(codes.directed_prefix):]
            call = views.ringing.directed(tenant, target)
        elif views.lot.call_in(tenant, dest):
            kind, slot = "slot", dest
            call = views.lot.call_in(tenant, dest)
        if kind and picker and is_internal(tenant, picker):
            return RouteToPickup(call_id=event.call_id, at=event.at, target_call=call, kind=kind,  # type: ignore[arg-type]
                                 extension=picker, slot=slot, target=target, timeout_s=timeout_s)
        return fallback(event) if fallback is not None else None

    return route
