"""Contact lookup (screen pop): on an inbound call, ask the tenant's CRM who is calling.

Rules
1. ``ContactLookup`` is a ``CtiPort`` placed in the node's CTI tee. Its ``publish`` is a plain
   function: on an inbound ``CALL_CREATED`` of a tenant with a contact lookup it queues a lookup
   and returns at once. Routing never waits: the call proceeds while the lookup runs, and the
   engine (engine/fsm) never knows about it.
2. The lookup is ``GET <url>?caller_id=..&destination=..&call_id=..`` with the configured headers,
   ``Callengine-Event: CONTACT_LOOKUP``, ``Callengine-Delivery: <call id>`` and, with a secret,
   ``Callengine-Signature: t=..,v1=..``: the webhook scheme (``signing.py``) over the request's
   raw query string (the bytes after ``?``, as sent) in place of a body.
   ``timeout_s`` bounds the whole request. A timeout, an error, a non-2xx answer or a body
   that is not a JSON object means no contact. This is counted and logged at debug level, and
   nothing is published.
3. The answer is a JSON object (``{"name": ..., "crm_id": ..., "url": ...}``). Its scalar values
   (string, number, bool, null; strings cut at ``MAX_VALUE_CHARS``; at most ``MAX_KEYS`` keys)
   are published as the CTI event ``CALL_CONTACT`` of the call (``data`` = the contact; its
   ``name`` key becomes ``contact_name``, as ``name`` is the event's own name), through
   the node's CTI port (publisher, event store, webhooks), like any other event of the call.
   Clients of this contract version see ``{"type": "UNKNOWN", "name": "CALL_CONTACT", "data":
   {...}}`` (api/events.py rule 3) until the contract names it.
4. For the agent desktop: when the call rings an agent (``CALL_RINGING`` with an ``agent_id``),
   the contact is published again with that ``agent_id``, so a desktop that watches only its
   agent's events gets it. That happens at the ring if the contact is already known, or at once
   when the contact arrives after the ring. A call's state is forgotten at ``CALL_ENDED``.
   At most ``max_calls`` calls are tracked.
5. Bounded: at most ``concurrency`` lookups run at once. At most ``max_pending`` wait. Beyond
   that a lookup is dropped (counted): a CRM that is down must not pile up work.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
import msgspec
import trio

from adapters.webhooks.config import SIGNATURE_HEADER, ContactLookupConfig, WebhooksConfig
from adapters.webhooks.signing import signature_header
from engine.messages import CtiEvent

__all__ = ["ContactLookup", "CONTACT_EVENT", "MAX_KEYS", "MAX_VALUE_CHARS", "lookup_query"]

log = logging.getLogger("callengine.webhooks.lookup")

#: the CTI event name the contact is published under
CONTACT_EVENT = "CALL_CONTACT"
MAX_KEYS = 32
MAX_VALUE_CHARS = 1024
#: answer keys the wire event uses itself (``CtiUnknown.name`` is the event's name): renamed
#: ``contact_<key>`` so that the contact's ``name`` survives as ``contact_name``
_RESERVED = frozenset({"name"})


def lookup_query(caller_id: str, destination: str, call_id: str) -> str:
    """The query string of a lookup, exactly as sent and signed."""
    return urlencode({"caller_id": caller_id, "destination": destination, "call_id": call_id})


def _contact(body: bytes) -> dict[str, Any] | None:
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    if not isinstance(data, dict):
        return None
    out: dict[str, Any] = {}
    for key, value in data.items():
        if len(out) >= MAX_KEYS:
            break
        key = str(key)[:64]
        if key in _RESERVED:
            key = "contact_" + key
        if isinstance(value, str):
            out[key] = value[:MAX_VALUE_CHARS]
        elif value is None or isinstance(value, (bool, int, float)):
            out[key] = value
    return out or None


class _Call:
    __slots__ = ("tenant", "contact", "agents")

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.contact: dict[str, Any] | None = None
        self.agents: list[str] = []


class ContactLookup:
    """The contact lookup port and its workers (``run``). ``out`` is the node's CTI port."""

    def __init__(self, out: Any, config: WebhooksConfig | None = None, *,
                 client: httpx.AsyncClient | None = None, clock: Callable[[], float] = time.time,
                 concurrency: int = 16, max_pending: int = 1000, max_calls: int = 100_000) -> None:
        self.out = out
        self.lookups: dict[str, ContactLookupConfig] = config.contact_lookups() if config else {}
        self._client = client
        self._own_client = client is None
        self.clock = clock
        self.concurrency = concurrency
        self.max_pending = max_pending
        self.max_calls = max_calls
        self._pending: deque[tuple[CtiEvent, ContactLookupConfig]] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._calls: OrderedDict[str, _Call] = OrderedDict()
        self.requested = 0
        self.found = 0
        self.not_found = 0
        self.failed = 0
        self.timeouts = 0
        self.dropped = 0
        self.published = 0

    def configure(self, config: WebhooksConfig) -> None:
        """A new configuration (``WebhookConfigWatcher`` listener); applies to the next call."""
        self.lookups = config.contact_lookups()

    # ---- the port (plain, never blocks or raises) -----------------------------------------------

    def publish(self, event: CtiEvent) -> None:
        try:
            self._see(event)
        except Exception:  # noqa: BLE001 - never into the engine
            self.failed += 1
            log.exception("contact lookup: event %s not handled", event.name)

    def _see(self, event: CtiEvent) -> None:
        name = event.name
        if name == "CALL_CREATED":
            lookup = self.lookups.get(event.tenant)
            if lookup is None or event.data.get("direction", "inbound") != "inbound" or not event.call_id:
                return
            if len(self._pending) >= self.max_pending:
                self.dropped += 1
                return
            self._track(event.call_id, event.tenant)
            self._pending.append((event, lookup))
            if len(self._pending) == 1:
                self._lot.unpark()
        elif name == "CALL_RINGING" and event.agent_id:
            call = self._calls.get(event.call_id)
            if call is None:
                return
            if event.agent_id not in call.agents:
                call.agents.append(event.agent_id)
            if call.contact is not None:
                self._emit(event.call_id, call, event.agent_id)
        elif name == "CALL_ENDED":
            self._calls.pop(event.call_id, None)

    def _track(self, call_id: str, tenant: str) -> None:
        self._calls[call_id] = _Call(tenant)
        while len(self._calls) > self.max_calls:
            self._calls.popitem(last=False)

    def _emit(self, call_id: str, call: _Call, agent_id: str = "") -> None:
        assert call.contact is not None
        self.out.publish(CtiEvent(name=CONTACT_EVENT, tenant=call.tenant, at=self.clock(), call_id=call_id,
                                  agent_id=agent_id, data=call.contact))
        self.published += 1

    # ---- the workers ----------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        client = self._client
        if client is None:
            client = self._client = httpx.AsyncClient(follow_redirects=False)
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(self.concurrency):
                    nursery.start_soon(self._worker)
                task_status.started(self)
        finally:
            if self._own_client:
                with trio.CancelScope(shield=True):
                    await client.aclose()

    async def _worker(self) -> None:
        while True:
            while not self._pending:
                await self._lot.park()
            event, lookup = self._pending.popleft()
            if self._pending:
                self._lot.unpark()
            contact = await self._ask(event, lookup)
            call = self._calls.get(event.call_id)
            if contact is None or call is None:  # nothing, or the call already ended
                continue
            call.contact = contact
            self._emit(event.call_id, call)
            for agent in call.agents:
                self._emit(event.call_id, call, agent)

    async def _ask(self, event: CtiEvent, lookup: ContactLookupConfig) -> dict[str, Any] | None:
        assert self._client is not None
        self.requested += 1
        query = lookup_query(str(event.data.get("caller_id", "")), str(event.data.get("destination", "")),
                             event.call_id)
        parts = urlsplit(lookup.url)
        url = urlunsplit((parts.scheme, parts.netloc, parts.path or "/",
                          f"{parts.query}&{query}" if parts.query else query, ""))
        signed = (f"{parts.query}&{query}" if parts.query else query).encode()
        headers = {**lookup.headers, "Accept": "application/json", "Callengine-Event": "CONTACT_LOOKUP",
                   "Callengine-Delivery": event.call_id}
        if lookup.secret is not None:
            headers[SIGNATURE_HEADER] = signature_header(lookup.secret, int(self.clock()), signed)
        try:
            with trio.fail_after(lookup.timeout_s):
                response = await self._client.get(url, headers=headers, timeout=lookup.timeout_s)
        except (trio.TooSlowError, httpx.TimeoutException):
            self.timeouts += 1
            log.debug("contact lookup %s/%s: timeout after %g s", event.tenant, event.call_id, lookup.timeout_s)
            return None
        except httpx.HTTPError as exc:
            self.failed += 1
            log.debug("contact lookup %s/%s failed: %r", event.tenant, event.call_id, exc)
            return None
        if not 200 <= response.status_code < 300:
            self.not_found += 1
            return None
        contact = _contact(response.content)
        if contact is None:
            self.not_found += 1
            return None
        self.found += 1
        return contact

    def statistics(self) -> dict[str, int]:
        return {"requested": self.requested, "found": self.found, "not_found": self.not_found,
                "failed": self.failed, "timeouts": self.timeouts, "dropped": self.dropped,
                "published": self.published, "pending": len(self._pending)}
