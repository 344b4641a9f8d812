"""A fake FreeSWITCH driven from outside the shards (tests, the CLI demo), plus its ChannelSource.

It plays the switch and the humans: callers dial a queue and hang up ``talk_s`` after being
bridged; agents' phones answer ``answer_s`` after ringing. It checks what only the switch can
see: an agent's phone never has two live legs (an agent is never reserved/rung twice).
Its channel table is written to a file after every tick: ``FileChannelSource`` reads it, as a
restarted shard would ask FreeSWITCH (``show channels as json``).
"""

from __future__ import annotations

import heapq
import os
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from engine.cluster.clock import now as cluster_now
from engine.cluster.recovery import LiveChannel
from engine.messages import (
    ChannelAnswered,
    ChannelCreated,
    ChannelHangup,
    MediaAnswer,
    MediaBridge,
    MediaCommand,
    MediaHangup,
    MediaOriginate,
)

__all__ = ["FakeSwitch", "FileChannelSource"]

_channels_encoder = msgspec.msgpack.Encoder()
_channels_decoder = msgspec.msgpack.Decoder(list[LiveChannel])


class FileChannelSource:
    """Picklable ChannelSource reading a fake switch's channel file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self) -> list[LiveChannel]:
        try:
            with open(self.path, "rb") as f:
                return _channels_decoder.decode(f.read())
        except FileNotFoundError:
            return []


class FakeSwitch:
    def __init__(self, *, node: str = "fs1", channel_file: str | None = None, answer_s: float = 0.05,
                 talk_s: float = 0.2, ext_to_agent: dict[str, str] | None = None,
                 clock: Callable[[], float] = cluster_now) -> None:
        self.node = node
        self.channel_file = channel_file
        self.answer_s = answer_s
        self.talk_s = talk_s
        self.ext_to_agent = ext_to_agent or {}
        self.clock = clock
        self.channels: dict[tuple[str, str], LiveChannel] = {}
        self.ext_legs: dict[str, set[tuple[str, str]]] = {}
        self.leg_ext: dict[tuple[str, str], str] = {}
        self.heap: list[tuple[float, int, Any]] = []
        self.seq = 0
        self.violations: list[str] = []
        #: per extension: (time, call id, leg, what) of its legs, for diagnosing a violation
        self.history: dict[str, list[tuple[float, str, str, str]]] = {}
        self.created: set[str] = set()
        self.bridged: set[str] = set()
        self.ended: set[str] = set()
        self.outbox: list[Any] = []

    # ---------------------------------------------------------------- callers

    def new_call(self, destination: str, tenant: str = "default", call_id: str = "") -> str:
        call_id = call_id or uuid.uuid4().hex
        t = self.clock()
        self.channels[(call_id, "a")] = LiveChannel(call_id=call_id, node=self.node, caller_id=f"+1{len(self.created)}",
                                                    destination=destination, tenant=tenant, created_at=t)
        self.created.add(call_id)
        self.outbox.append(ChannelCreated(call_id=call_id, at=t, node=self.node, caller_id=f"+1{len(self.created)}",
                                          destination=destination, tenant=tenant))
        return call_id

    def hangup(self, call_id: str, leg: str = "a") -> None:
        ch = self.channels.pop((call_id, leg), None)
        if ch is None:
            return
        self._free_leg(call_id, leg)
        if leg == "a":
            self.ended.add(call_id)
            for key in [k for k in self.channels if k[0] == call_id]:  # FS tears the bridge down too
                self.channels.pop(key)
                self._free_leg(*key)
                self.outbox.append(ChannelHangup(call_id=call_id, leg=key[1], at=self.clock(), node=self.node))
        self.outbox.append(ChannelHangup(call_id=call_id, leg=leg, at=self.clock(), node=self.node))

    def _free_leg(self, call_id: str, leg: str) -> None:
        ext = self.leg_ext.pop((call_id, leg), None)
        if ext is not None:
            self.history.setdefault(ext, []).append((self.clock(), call_id, leg, "gone"))
            self.ext_legs.get(ext, set()).discard((call_id, leg))

    def _at(self, delay: float, action: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (self.clock() + delay, self.seq, action))

    # ---------------------------------------------------------------- commands from the engine

    def on_media(self, cmd: MediaCommand) -> None:
        key = (cmd.call_id, cmd.leg)
        if isinstance(cmd, MediaOriginate) and cmd.leg != "a":
            if (cmd.call_id, "a") not in self.channels:
                self.outbox.append(ChannelHangup(call_id=cmd.call_id, leg=cmd.leg, at=self.clock(), node=self.node,
                                                 cause="ORIGINATOR_CANCEL"))
                return
            ext = cmd.destination
            legs = self.ext_legs.setdefault(ext, set())
            self.history.setdefault(ext, []).append((self.clock(), cmd.call_id, cmd.leg,
                                                     f"originate {cmd.variables.get('callengine_offer_id', '')}"))
            if legs:
                self.violations.append(f"{ext} rung for {cmd.call_id} while on {sorted(legs)}")
            legs.add(key)
            self.leg_ext[key] = ext
            self.channels[key] = LiveChannel(call_id=cmd.call_id, leg=cmd.leg, node=self.node, direction="outbound",
                                             destination=ext, created_at=self.clock(),
                                             agent_id=self.ext_to_agent.get(ext, ""),
                                             queue_id=cmd.variables.get("callengine_queue_id", ""),
                                             offer_id=cmd.variables.get("callengine_offer_id", ""))
            self._at(self.answer_s, lambda: self._answer(key))
        elif isinstance(cmd, MediaAnswer):
            ch = self.channels.get(key)
            if ch is not None:
                self.channels[key] = msgspec.structs.replace(ch, answered=True)
        elif isinstance(cmd, MediaBridge):
            a, b = self.channels.get((cmd.call_id, "a")), self.channels.get((cmd.call_id, cmd.other_leg))
            if a is None or b is None:
                return
            self.channels[(cmd.call_id, "a")] = msgspec.structs.replace(a, bridged_to=cmd.other_leg)
            self.channels[(cmd.call_id, cmd.other_leg)] = msgspec.structs.replace(b, bridged_to="a")
            if cmd.call_id not in self.bridged:
                self.bridged.add(cmd.call_id)
                self._at(self.talk_s, lambda: self.hangup(cmd.call_id))
        elif isinstance(cmd, MediaHangup):
            if key in self.channels:
                self.hangup(cmd.call_id, cmd.leg)

    def _answer(self, key: tuple[str, str]) -> None:
        ch = self.channels.get(key)
        if ch is None or ch.answered:
            return
        self.channels[key] = msgspec.structs.replace(ch, answered=True)
        ext = self.leg_ext.get(key)
        if ext is not None:
            self.history.setdefault(ext, []).append((self.clock(), key[0], key[1], "answered"))
        self.outbox.append(ChannelAnswered(call_id=key[0], leg=key[1], at=self.clock(), node=self.node))

    # ---------------------------------------------------------------- the loop

    def tick(self) -> list[Any]:
        """Run due actions; return the events to send to the engine (and write the channel file)."""
        now = self.clock()
        while self.heap and self.heap[0][0] <= now:
            _, _, action = heapq.heappop(self.heap)
            action()
        events, self.outbox = self.outbox, []
        if self.channel_file:
            self.write_channels()
        return events

    def write_channels(self) -> None:
        assert self.channel_file
        directory = os.path.dirname(self.channel_file) or "."
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ch-")
        with os.fdopen(fd, "wb") as f:
            f.write(_channels_encoder.encode(list(self.channels.values())))
        os.replace(tmp, self.channel_file)

    def live_calls(self) -> set[str]:
        return {cid for cid, leg in self.channels if leg == "a"}

    def busy_extensions(self) -> dict[str, set[tuple[str, str]]]:
        return {ext: legs for ext, legs in self.ext_legs.items() if legs}
