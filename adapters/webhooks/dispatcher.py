"""Webhook dispatcher: delivers CTI events and CDRs to the tenants' webhooks, off the call path.

Rules
1. ``offer(event)`` / ``offer_cdr(cdr)`` are plain functions: they never await and never raise.
   They look up the tenant's webhooks that take the event's type and append the event to each
   one's bounded queue. A full queue does not wait: the event becomes a ``queue_full`` dead
   letter for that webhook (other webhooks still get it). An exception inside ``offer`` is
   logged and counted (``offer_errors``), never propagated into the engine.
2. One worker task per webhook delivers its queue in order, one request at a time (a receiver
   sees a webhook's events in the order the engine produced them; a slow receiver only fills its
   own queue). The body is rendered on the worker, not in ``offer``.
3. Retries: connection errors, timeouts (``timeout_s`` bounds a whole attempt), 5xx and 429.
   Backoff is full jitter: ``uniform(0, min(cap, base * 2 ** (attempt - 1)))``; a 429's
   ``Retry-After`` (seconds or an HTTP date) replaces it, capped by ``retry_after_cap_s``. Any
   other status below 200 or from 300 up is final (``rejected``). After ``max_attempts`` the event
   is dead-lettered (``exhausted``). Every attempt carries the same ``Callengine-Delivery`` id.
4. Dead letters are queued in memory (bounded by ``max_pending_dead_letters``; beyond it they are
   logged and counted in ``dead_letters_dropped``) and written by one pump task to the
   ``DeadLetterStore`` in batches; a store that fails is retried with capped backoff.
5. ``aclose(drain_s)`` (also at the end of ``open_webhook_dispatcher``) lets the workers drain
   their queues for up to ``drain_s``, then dead-letters what is left (``shutdown``) and flushes
   the dead letters to the store.
6. trio only: ``offer`` must be called from the dispatcher's trio thread (the hub's pump and the
   shard's workers are).

Request: ``POST url`` with ``Content-Type: application/json``, the webhook's headers,
``Callengine-Webhook-Id``, ``Callengine-Event`` (type name), ``Callengine-Delivery``,
``Callengine-Attempt`` (1-based) and, with a secret, ``Callengine-Signature`` (``signing.py``).
"""

from __future__ import annotations

import email.utils
import itertools
import logging
import math
import random
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
import trio

from adapters.webhooks.config import (
    CDR_EVENT,
    SIGNATURE_HEADER,
    WebhookConfig,
    WebhooksConfig,
    render_body,
    validate,
)
from adapters.webhooks.deadletter import DeadLetter, DeadLetterStore, Reason
from adapters.webhooks.signing import signature_header
from api.events import CtiBase, decode_event, event_name
from engine.messages import Cdr

__all__ = ["WebhookDispatcher", "open_webhook_dispatcher", "full_jitter", "parse_retry_after"]

log = logging.getLogger("callengine.webhooks")

_encoder = msgspec.json.Encoder()
#: characters of a response body kept in a dead letter's last_error
_ERROR_BODY_CHARS = 200


def full_jitter(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Sleep before attempt ``attempt + 1`` (AWS "full jitter")."""
    return rng.uniform(0.0, min(cap_s, base_s * (2 ** (attempt - 1))))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - now)
    if math.isnan(seconds) or seconds < 0:
        return None
    return seconds


class _Job:
    __slots__ = ("event_type", "event", "delivery_id", "attempts", "status", "error")

    def __init__(self, event_type: str, event: CtiBase | Cdr, delivery_id: str) -> None:
        self.event_type = event_type
        self.event = event
        self.delivery_id = delivery_id
        self.attempts = 0
        self.status: int | None = None
        self.error = ""


class _Hook:
    """One webhook's queue, worker state and counters."""

    def __init__(self, tenant: str, config: WebhookConfig) -> None:
        self.tenant = tenant
        self.config = config
        self.types = frozenset(config.events)
        self.queue: deque[_Job] = deque()
        self.lot = trio.lowlevel.ParkingLot()
        self.busy = False
        self.delivered = 0
        self.attempts = 0
        self.retries = 0
        self.dead = 0
        self.removed = False
        self.scope = trio.CancelScope()


class WebhookDispatcher:
    def __init__(self, config: WebhooksConfig, store: DeadLetterStore, *,
                 client: httpx.AsyncClient | None = None, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.time, max_pending_dead_letters: int = 100_000,
                 sleep: Callable[[float], Any] = trio.sleep) -> None:
        validate(config)
        self.config = config
        self.store = store
        self._client = client
        self._own_client = client is None
        self.rng = rng or random.Random()
        self.clock = clock
        self._sleep = sleep
        self._hooks: dict[str, list[_Hook]] = {}
        for tw in config.tenants:
            self._hooks[tw.tenant] = [_Hook(tw.tenant, w) for w in tw.webhooks if w.enabled]
        self._ids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:12]
        self.max_pending_dead_letters = max_pending_dead_letters
        self._dead: deque[DeadLetter] = deque()
        self._dead_lot = trio.lowlevel.ParkingLot()
        self._dead_writing = 0
        self._closing = False
        self._nursery: trio.Nursery | None = None
        self._workers_scope: trio.CancelScope | None = None
        self._workers_nursery: trio.Nursery | None = None
        self._workers_done = trio.Event()
        self.offered = 0
        self.offer_errors = 0
        #: times a hub subscription feeding this dispatcher overflowed (``wiring.pump_hub``)
        self.hub_overflows = 0
        self.dead_letters_dropped = 0
        self.dead_letters_stored = 0
        self.store_errors = 0
        #: dead letters queued again by ``redrive``
        self.redriven = 0

    # ---- the engine's side (plain functions) ----------------------------------------------------

    def wants(self, tenant: str, event_type: str) -> bool:
        return any(event_type in h.types for h in self._hooks.get(tenant, ()))

    def tenants(self) -> list[str]:
        return [t for t, hooks in self._hooks.items() if hooks]

    def offer(self, event: CtiBase) -> None:
        """Queue a CTI wire event for its tenant's webhooks. Never awaits, never raises."""
        try:
            self._offer(event.tenant, event_name(event), event)
        except Exception:  # noqa: BLE001 - the call path must never see a webhook problem
            self.offer_errors += 1
            log.exception("webhooks: offer failed (event dropped for webhooks)")

    def offer_cdr(self, cdr: Cdr) -> None:
        """Queue a CDR for its tenant's ``CDR`` webhooks (call journaling). Never awaits or raises."""
        try:
            self._offer(cdr.tenant, CDR_EVENT, cdr)
        except Exception:  # noqa: BLE001
            self.offer_errors += 1
            log.exception("webhooks: offer_cdr failed (CDR dropped for webhooks)")

    def _offer(self, tenant: str, event_type: str, event: CtiBase | Cdr) -> None:
        hooks = self._hooks.get(tenant)
        if not hooks:
            return
        for hook in hooks:
            if event_type not in hook.types:
                continue
            self.offered += 1
            job = _Job(event_type, event, f"{self._prefix}-{next(self._ids)}")
            if self._closing or len(hook.queue) >= hook.config.queue_capacity:
                self._dead_letter(hook, job, "shutdown" if self._closing else "queue_full", 0, None,
                                  "dispatcher closing" if self._closing
                                  else f"queue full ({hook.config.queue_capacity} waiting)")
                continue
            hook.queue.append(job)
            if len(hook.queue) == 1:
                hook.lot.unpark_all()

    def redrive(self, letter: DeadLetter) -> str:
        """Queue a stored dead letter again for its webhook, under its own delivery id (receivers
        deduplicate on ``Callengine-Delivery``, so a letter that did arrive once is harmless).
        Returns "queued", or why not: "closing", "no_webhook" (removed, disabled, or no longer
        taking that event type), "queue_full", "bad_event" (its stored JSON does not decode).
        Never awaits; a redriven event that fails again becomes a dead letter again."""
        if self._closing:
            return "closing"
        hook = next((h for h in self._hooks.get(letter.tenant, ()) if h.config.id == letter.webhook_id), None)
        if hook is None or letter.event_type not in hook.types:
            return "no_webhook"
        try:
            event: CtiBase | Cdr = (msgspec.json.decode(letter.event, type=Cdr) if letter.event_type == CDR_EVENT
                                    else decode_event(letter.event))
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
            return "bad_event"
        if len(hook.queue) >= hook.config.queue_capacity:
            return "queue_full"
        self.redriven += 1
        hook.queue.append(_Job(letter.event_type, event, letter.delivery_id))
        if len(hook.queue) == 1:
            hook.lot.unpark_all()
        return "queued"

    # ---- dead letters ---------------------------------------------------------------------------

    def _dead_letter(self, hook: _Hook, job: _Job, reason: Reason, attempts: int, status: int | None,
                     error: str) -> None:
        hook.dead += 1
        if len(self._dead) >= self.max_pending_dead_letters:
            self.dead_letters_dropped += 1
            if self.dead_letters_dropped in (1, 10, 100) or self.dead_letters_dropped % 1000 == 0:
                log.error("webhooks: %d dead letters dropped (store too slow; %s/%s %s)",
                          self.dead_letters_dropped, hook.tenant, hook.config.id, reason)
            return
        self._dead.append(DeadLetter(
            tenant=hook.tenant, webhook_id=hook.config.id, delivery_id=job.delivery_id,
            event_type=job.event_type, event=_encoder.encode(job.event).decode(), reason=reason,
            attempts=attempts, last_status=status, last_error=error, at=self.clock()))
        if len(self._dead) == 1:
            self._dead_lot.unpark_all()

    async def _dead_pump(self) -> None:
        delay = 0.05
        while True:
            while not self._dead:
                await self._dead_lot.park()
            batch = list(self._dead)
            self._dead_writing = len(batch)
            try:
                await self.store.add(batch)
            except Exception as exc:  # noqa: BLE001 - keep them and retry; never crash the node
                self._dead_writing = 0
                self.store_errors += 1
                log.warning("webhooks: dead-letter store failed (%s: %s); retrying in %.2f s",
                            type(exc).__name__, exc, delay)
                await trio.sleep(delay)
                delay = min(5.0, delay * 2)
                continue
            delay = 0.05
            for _ in range(len(batch)):
                self._dead.popleft()
            self._dead_writing = 0
            self.dead_letters_stored += len(batch)

    # ---- delivery -------------------------------------------------------------------------------

    def _body(self, hook: _Hook, job: _Job) -> bytes:
        encoded = _encoder.encode(job.event)
        template = hook.config.body_template
        if template is None:
            if isinstance(job.event, Cdr):  # a CDR has no type tag of its own: add it
                return b'{"type":"CDR",' + encoded[1:]
            return encoded
        payload = msgspec.to_builtins(job.event)
        payload.setdefault("type", job.event_type)
        return render_body(template, payload, encoded)

    async def _worker(self, hook: _Hook) -> None:
        with hook.scope:  # cancelled alone when the webhook is removed (reconfigure)
            while True:
                while not hook.queue:
                    await hook.lot.park()
                job = hook.queue[0]
                hook.busy = True
                try:
                    await self._deliver(hook, job)
                except trio.Cancelled:  # shutdown while in flight: the receiver may not have it
                    self._dead_letter(hook, job, "shutdown", job.attempts, job.status,
                                      job.error or ("webhook removed during delivery" if hook.removed
                                                    else "dispatcher stopped during delivery"))
                    raise
                finally:
                    hook.queue.popleft()
                    hook.busy = False
        while hook.queue:  # removed: what it still held will not be sent
            self._dead_letter(hook, hook.queue.popleft(), "shutdown", 0, None, "webhook removed")

    async def _deliver(self, hook: _Hook, job: _Job) -> None:
        cfg = hook.config
        try:
            body = self._body(hook, job)
        except Exception as exc:  # noqa: BLE001 - validated templates should not fail; never crash
            self._dead_letter(hook, job, "rejected", 0, None, f"body rendering failed: {exc!r}")
            return
        assert self._client is not None
        status: int | None = None
        error = ""
        for attempt in range(1, cfg.max_attempts + 1):
            hook.attempts += 1
            headers = {"Content-Type": "application/json", **cfg.headers,
                       "Callengine-Webhook-Id": cfg.id, "Callengine-Event": job.event_type,
                       "Callengine-Delivery": job.delivery_id, "Callengine-Attempt": str(attempt)}
            if cfg.secret is not None:
                headers[SIGNATURE_HEADER] = signature_header(cfg.secret, int(self.clock()), body)
            wait: float | None = None
            status = None
            job.attempts = attempt
            try:
                with trio.fail_after(cfg.timeout_s):
                    response = await self._client.post(cfg.url, content=body, headers=headers,
                                                       timeout=cfg.timeout_s)
                status = response.status_code
            except (trio.TooSlowError, httpx.TimeoutException):
                error = f"timeout after {cfg.timeout_s:g} s"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                if 200 <= status < 300:
                    hook.delivered += 1
                    return
                error = response.text[:_ERROR_BODY_CHARS]
                if status == 429:
                    after = parse_retry_after(response.headers.get("retry-after"), self.clock())
                    if after is not None:
                        wait = min(after, cfg.retry_after_cap_s)
                elif status < 500:
                    self._dead_letter(hook, job, "rejected", attempt, status, error)
                    return
            job.status, job.error = status, error
            if attempt == cfg.max_attempts:
                break
            hook.retries += 1
            if wait is None:
                wait = full_jitter(attempt, cfg.backoff_base_s, cfg.backoff_cap_s, self.rng)
            await self._sleep(wait)
        self._dead_letter(hook, job, "exhausted", cfg.max_attempts, status, error)

    # ---- lifecycle ------------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run the workers and the dead-letter pump until cancelled."""
        client = self._client
        if client is None:
            client = self._client = httpx.AsyncClient(follow_redirects=False)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._dead_pump)
                await nursery.start(self._run_workers)
                task_status.started(self)
        finally:
            self._nursery = None
            if self._own_client:
                with trio.CancelScope(shield=True):
                    await client.aclose()

    async def _run_workers(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with trio.CancelScope() as scope:
                self._workers_scope = scope
                async with trio.open_nursery() as nursery:
                    self._workers_nursery = nursery
                    for hooks in self._hooks.values():
                        for hook in hooks:
                            nursery.start_soon(self._worker, hook)
                    task_status.started()
                    await trio.sleep_forever()  # workers of webhooks added later start here too
        finally:
            self._workers_nursery = None
            self._workers_done.set()

    def reconfigure(self, config: WebhooksConfig) -> dict[str, int]:
        """Apply a new configuration while running (a change in PostgreSQL, ``pgconfig.py``).

        A webhook that stays (same tenant and id) keeps its queue, its worker and its counters and
        takes the new settings from its next delivery on; a new one gets a worker; a removed (or
        disabled) one stops: its in-flight and queued events become ``shutdown`` dead letters.
        Plain function (no await): validated first, so a bad configuration changes nothing."""
        validate(config)
        old = {(h.tenant, h.config.id): h for hooks in self._hooks.values() for h in hooks}
        hooks_by_tenant: dict[str, list[_Hook]] = {}
        added = changed = 0
        for tw in config.tenants:
            group: list[_Hook] = []
            for w in tw.webhooks:
                if not w.enabled:
                    continue
                hook = old.pop((tw.tenant, w.id), None)
                if hook is None:
                    hook = _Hook(tw.tenant, w)
                    added += 1
                    if self._workers_nursery is not None:
                        self._workers_nursery.start_soon(self._worker, hook)
                elif hook.config != w:
                    hook.config, hook.types = w, frozenset(w.events)
                    changed += 1
                group.append(hook)
            hooks_by_tenant[tw.tenant] = group
        for hook in old.values():
            hook.removed = True
            hook.scope.cancel()
            if self._workers_nursery is None:  # no worker to clean up after itself
                while hook.queue:
                    self._dead_letter(hook, hook.queue.popleft(), "shutdown", 0, None, "webhook removed")
        self._hooks = hooks_by_tenant
        self.config = config
        return {"added": added, "changed": changed, "removed": len(old)}

    def queued(self) -> int:
        return sum(len(h.queue) for hooks in self._hooks.values() for h in hooks)

    async def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Wait (bounded) until every queue is empty and every dead letter is stored."""
        with trio.move_on_after(timeout_s):
            while self.queued() or self._dead:
                await trio.sleep(0.01)
            return True
        return False

    async def aclose(self, drain_s: float = 5.0) -> None:
        """Stop taking events, drain for up to ``drain_s``, dead-letter the rest, flush, stop."""
        self._closing = True
        with trio.move_on_after(drain_s):
            while self.queued():
                await trio.sleep(0.01)
        # stop the workers first (an in-flight job dead-letters itself), then what is still queued
        if self._workers_scope is not None:
            self._workers_scope.cancel()
            await self._workers_done.wait()
        nursery = self._nursery
        for hooks in self._hooks.values():
            for hook in hooks:
                while hook.queue:
                    self._dead_letter(hook, hook.queue.popleft(), "shutdown", 0, None,
                                      "still queued at shutdown")
        with trio.move_on_after(max(drain_s, 1.0)):
            while self._dead:
                await trio.sleep(0.01)
        if nursery is not None:
            nursery.cancel_scope.cancel()

    def statistics(self) -> dict[str, Any]:
        hooks = [h for group in self._hooks.values() for h in group]
        return {
            "offered": self.offered, "offer_errors": self.offer_errors, "queued": self.queued(),
            "delivered": sum(h.delivered for h in hooks), "attempts": sum(h.attempts for h in hooks),
            "retries": sum(h.retries for h in hooks), "dead_lettered": sum(h.dead for h in hooks),
            "dead_letters_pending": len(self._dead), "dead_letters_stored": self.dead_letters_stored,
            "dead_letters_dropped": self.dead_letters_dropped, "store_errors": self.store_errors,
            "redriven": self.redriven,
            "webhooks": {f"{h.tenant}/{h.config.id}": {"queued": len(h.queue), "delivered": h.delivered,
                                                        "retries": h.retries, "dead_lettered": h.dead}
                         for h in hooks},
        }


@asynccontextmanager
async def open_webhook_dispatcher(config: WebhooksConfig, store: DeadLetterStore, *,
                                  drain_s: float = 5.0, **kwargs: Any) -> AsyncIterator[WebhookDispatcher]:
    """A running dispatcher for the block; at exit it drains (``aclose(drain_s)``)."""
    dispatcher = WebhookDispatcher(config, store, **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(dispatcher.run)
        try:
            yield dispatcher
        finally:
            with trio.CancelScope(shield=True):
                await dispatcher.aclose(drain_s)
            nursery.cancel_scope.cancel()
