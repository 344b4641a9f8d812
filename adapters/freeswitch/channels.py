"""Ask a FreeSWITCH node which channels exist: the ``ChannelSource`` of a restarted shard host.

Rules
-----
* FreeSWITCH is the truth for calls (engine/cluster/recovery.py Rule 2). A shard host that Ray
  restarted calls one :class:`EslChannelSource` per media node (``HostConfig.channel_sources``),
  possibly on another machine than the gateway: the source opens its OWN short inbound connection
  (``link.open_authenticated``: same handshake and password as the link, no event subscription),
  asks, and closes. Nothing is shared with the gateway process.
* Picklable (Ray pickles ``HostConfig`` into the fresh process): it holds only the node's
  ``EslNodeConfig`` (the password is a ``Secret``, pickled by value, never printed) and numbers.
* Synchronous and thread-safe: ``__call__`` runs its own ``trio.run`` (the host calls it through
  ``trio.to_thread.run_sync``), bounded as a whole by ``timeout_s``.
* What it asks, as the link's reconcile does: ``show channels as json`` (one row per channel:
  direction, callstate, numbers, ``created_epoch``), then in ONE pipelined round
  (``api_many``) ``uuid_getvar`` of the variables in :data:`VARIABLES` for every channel.
* How a channel becomes a ``LiveChannel`` (the rules of ``mapping.identify`` and ``_created``):
    - ``callengine_call_id`` set: a leg the engine originated; leg = ``callengine_leg`` (else the
      UUID); agent / queue / offer ids from ``callengine_agent_id`` / ``_queue_id`` / ``_offer_id``
      (engine/fsm/call.py ``_ring`` sets them);
    - no such variable and direction ``inbound``: a caller; call id = the UUID, leg ``"a"``;
    - anything else is foreign and left out; so is a channel that is hanging up or vanished
      between the two requests (``uuid_getvar`` answers ``-ERR``);
    - answered: callstate ACTIVE / HELD / UNHELD; tenant: ``callengine_tenant``, else
      ``domain_name``, else ``default`` (an engine leg takes its caller's tenant, as recovery
      matches agents by their call's tenant);
    - bridged_to: ``show channels`` has no partner column (captures of FS 1.10.12), so the
      partner comes from ``bridge_to``, which FreeSWITCH sets on both legs while they are bridged
      and clears on unbridge (``bridge_uuid`` / ``signal_bond`` outlive the bridge, so they are not
      used), mapped from the partner's UUID to its leg. Unknown: ``""`` (the rebuild then bridges
      the talking leg again, which is harmless).
* Failure is one typed error, :class:`ChannelSourceError`, whose ``reason`` says which:
  ``unreachable`` (connect refused / no route), ``auth`` (password refused), ``timeout`` (the
  whole exchange exceeded ``timeout_s``), ``protocol`` (bad bytes, ``-ERR`` to ``show``). The
  message names the node, never the password. The host logs it and tries its next source.
"""

from __future__ import annotations

import math
from typing import Any

import trio

from adapters.freeswitch.codec import RemoteProtocolError
from adapters.freeswitch.config import EslNodeConfig
from adapters.freeswitch.connection import EslConnection, EslError
from adapters.freeswitch.link import (
    EslAuthError,
    channel_rows,
    open_authenticated,
    row_answered,
    var_value,
)
from adapters.freeswitch.mapping import CALL_VAR, LEG_VAR
from engine.cluster.recovery import LiveChannel

__all__ = ["VARIABLES", "ChannelSourceError", "EslChannelSource", "live_channels"]

#: the channel variables asked for every channel, in this order
VARIABLES = (CALL_VAR, LEG_VAR, "callengine_agent_id", "callengine_queue_id", "callengine_offer_id",
             "callengine_tenant", "domain_name", "bridge_to")


class ChannelSourceError(Exception):
    """A media node could not say which channels it has (``reason``: unreachable, auth, timeout,
    protocol). Picklable: ``args`` are (message, node, reason)."""

    def __init__(self, message: str, node: str = "", reason: str = "unreachable") -> None:
        super().__init__(message, node, reason)
        self.message, self.node, self.reason = message, node, reason

    def __str__(self) -> str:
        return self.message


class EslChannelSource:
    """``ChannelSource`` of one FreeSWITCH node over inbound ESL (module rules)."""

    def __init__(self, config: EslNodeConfig, *, timeout_s: float = 5.0,
                 max_frame_bytes: int | None = None) -> None:
        if not timeout_s > 0 or math.isinf(timeout_s):
            raise ValueError("timeout_s must be a positive, finite number of seconds")
        self.config = config
        self.timeout_s = timeout_s
        self.max_frame_bytes = max_frame_bytes

    def __repr__(self) -> str:
        c = self.config
        return f"EslChannelSource(node={c.name!r}, host={c.host!r}, port={c.port})"

    def __call__(self) -> list[LiveChannel]:
        return trio.run(self.fetch)

    async def fetch(self) -> list[LiveChannel]:
        """The node's channels (inside a trio run); ``ChannelSourceError`` when it cannot say."""
        c = self.config
        where = f"FreeSWITCH node {c.name!r} at {c.host}:{c.port}"
        try:
            with trio.fail_after(self.timeout_s):
                conn = await open_authenticated(c, timeout_s=self.timeout_s,
                                                max_frame=self.max_frame_bytes)
                got: list[Any] = []
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_serve_quietly, conn)
                        nursery.start_soon(self._ask, conn, got, nursery.cancel_scope)
                finally:
                    await conn.aclose()
                if isinstance(got[0], BaseException):  # raised here, not as an ExceptionGroup
                    raise got[0]
                rows, answers = got[0]
        except EslAuthError as exc:
            raise ChannelSourceError(str(exc), c.name, "auth") from None
        except trio.TooSlowError:
            raise ChannelSourceError(f"{where}: no channel list within {self.timeout_s:g} s",
                                     c.name, "timeout") from None
        except (RemoteProtocolError, ValueError) as exc:
            raise ChannelSourceError(f"{where}: {exc}", c.name, "protocol") from None
        except (OSError, EslError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ChannelSourceError(f"{where}: unreachable ({type(exc).__name__}: {exc})",
                                     c.name, "unreachable") from None
        return live_channels(rows, answers, c.name)

    async def _ask(self, conn: EslConnection, got: list[Any], scope: trio.CancelScope) -> None:
        """The two requests; their result, or the error that ended them, goes into ``got``."""
        try:
            body = await conn.api("show channels as json", self.timeout_s)
            rows = [r for r in channel_rows(body) if isinstance(r, dict) and r.get("uuid")]
            cmds = [f"uuid_getvar {r['uuid']} {name}" for r in rows for name in VARIABLES]
            answers = await conn.api_many(cmds, self.timeout_s) if cmds else []
            got.append((rows, answers))
        except (OSError, EslError, RemoteProtocolError, trio.TooSlowError,
                trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            got.append(exc)
        finally:
            scope.cancel()


async def _serve_quietly(conn: EslConnection) -> None:
    """Run the connection's reader/writer; a dead connection shows up as the waiting request's
    ``ConnectionLost`` (an ``EslError``), so its own failure is not raised twice."""
    try:
        await conn.serve()
    except (OSError, EslError, RemoteProtocolError, trio.BrokenResourceError,
            trio.ClosedResourceError):
        pass


def live_channels(rows: list[dict[str, Any]], answers: list[str], node: str) -> list[LiveChannel]:
    """Rows of ``show channels as json`` and, per row, the ``uuid_getvar`` answers for
    :data:`VARIABLES` -> the engine's channels (module rules). Pure."""
    n = len(VARIABLES)
    if len(answers) != n * len(rows):
        raise ValueError(f"{len(answers)} variable answers for {len(rows)} channels")
    found: list[tuple[dict[str, Any], dict[str, str], str, str]] = []
    leg_of: dict[str, tuple[str, str]] = {}  # uuid -> (call id, leg)
    for i, row in enumerate(rows):
        raw = answers[i * n:(i + 1) * n]
        if raw[0].strip().startswith("-ERR") or row.get("callstate") == "HANGUP":
            continue  # gone between the two requests, or on its way out
        v = {name: var_value(text) for name, text in zip(VARIABLES, raw, strict=True)}
        uuid = str(row["uuid"])
        call_id, leg = v[CALL_VAR], v[LEG_VAR]
        if not call_id:
            if row.get("direction") != "inbound":
                continue  # foreign: not a channel of ours
            call_id, leg = uuid, "a"
        leg = leg or uuid
        leg_of[uuid] = (call_id, leg)
        found.append((row, v, call_id, leg))
    tenants = {call_id: v["callengine_tenant"] or v["domain_name"] or "default"
               for _, v, call_id, leg in found if leg == "a"}
    out = []
    for row, v, call_id, leg in found:
        partner = leg_of.get(v["bridge_to"])
        own_tenant = v["callengine_tenant"] or v["domain_name"] or "default"
        out.append(LiveChannel(
            call_id=call_id, leg=leg, node=node, answered=row_answered(row),
            bridged_to=partner[1] if partner is not None and partner[0] == call_id else "",
            direction="outbound" if row.get("direction") == "outbound" else "inbound",
            caller_id=str(row.get("cid_num", "")), destination=str(row.get("dest", "")),
            tenant=tenants.get(call_id, own_tenant), created_at=_epoch(row.get("created_epoch")),
            agent_id=v["callengine_agent_id"], queue_id=v["callengine_queue_id"],
            offer_id=v["callengine_offer_id"]))
    return out


def _epoch(value: Any) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        return 0.0
    return t if t > 0 and math.isfinite(t) else 0.0
