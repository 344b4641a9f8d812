"""Per-trunk concurrent-call counts, for ``engine.routing.outbound.plan``.

Where the count lives (the simple choice, on purpose): the call machine says which trunk each call
is on with CTI events (``CALL_TRUNK_SEIZED`` each time it dials a trunk, failover included, and
``CALL_ENDED``); :class:`TrunkLedger` follows them, keyed by (tenant, call id), so a call counts
once, on the trunk of its latest attempt. Wrap the node's CTI port in :class:`LedgerCti` and give
``ledger.usage(tenant)`` to ``plan``.

Surviving a restart: the ledger is memory, but the truth is on the switch. Every trunk leg carries
the channel variable ``callengine_trunk_id`` (and ``callengine_call_id``), so after a restart
:meth:`TrunkLedger.rebuild` counts the live trunk legs from the switch's channel list (the same
rows the recovery reads, ``adapters.freeswitch.channels``) instead of trusting a lost memory.

Limits of this choice (documented in docs/outbound.md): the ledger counts the calls this process
sees. Several engine processes dialling the same trunk each count their own (give each a share of
the trunk, or let the carrier refuse: its congestion makes the call fail over). Between ``plan``
and the call's ``CALL_TRUNK_SEIZED`` another plan can see the same count (one node, one event loop:
the window is one mailbox turn).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from engine.messages import CtiEvent

if TYPE_CHECKING:
    from engine.actors.ports import CtiPort

__all__ = ["TrunkLedger", "LedgerCti"]


class TrunkLedger:
    def __init__(self) -> None:
        #: (tenant, call id) -> trunk id
        self._calls: dict[tuple[str, str], str] = {}

    def observe(self, event: CtiEvent) -> None:
        key = (event.tenant, event.call_id or "")
        if event.name == "CALL_TRUNK_SEIZED":
            trunk = event.data.get("trunk")
            if isinstance(trunk, str) and trunk:
                self._calls[key] = trunk
        elif event.name == "CALL_ENDED":
            self._calls.pop(key, None)

    def usage(self, tenant: str) -> dict[str, int]:
        return dict(Counter(trunk for (t, _), trunk in self._calls.items() if t == tenant))

    def rebuild(self, legs: Iterable[Mapping[str, str]]) -> int:
        """Replace the counts with the switch's live trunk legs: rows with ``callengine_trunk_id``,
        ``callengine_call_id`` and ``callengine_tenant`` (default tenant when absent). Returns how
        many calls it found."""
        calls: dict[tuple[str, str], str] = {}
        for row in legs:
            trunk = row.get("callengine_trunk_id", "")
            call_id = row.get("callengine_call_id", "")
            if trunk and call_id:
                calls[(row.get("callengine_tenant") or "default", call_id)] = trunk
        self._calls = calls
        return len(calls)

    def statistics(self) -> dict[str, int]:
        return {"calls": len(self._calls)}


class LedgerCti:
    """A ``CtiPort`` that feeds the ledger and passes every event on to ``inner``."""

    def __init__(self, ledger: TrunkLedger, inner: CtiPort) -> None:
        self.ledger = ledger
        self.inner = inner

    def publish(self, event: CtiEvent) -> None:
        self.ledger.observe(event)
        self.inner.publish(event)
