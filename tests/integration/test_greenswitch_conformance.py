"""Conformance of the emulator with third-party clients and with real FreeSWITCH recordings.

Rules: greenswitch (gevent) runs in a SUBPROCESS, because gevent's monkeypatching must never touch
the pytest process, which runs trio. Everything on 127.0.0.1, port 0, bounded by fail_after.

The header-name test compares, per event type, the set of header NAMES the emulator emits with
those of the same event type in the real fs-1.10.12 recordings. Documented, allowed differences:
* ``variable_*``: the emulator sends a handful of channel variables, FreeSWITCH sends dozens that
  depend on the dialplan and endpoint; they are excluded on both sides.
* Caller-/Other-Leg- profile fields that FreeSWITCH omits when empty or that depend on the
  endpoint type (ENDPOINT_DEPENDENT below): loopback channels have no Caller-Username /
  Caller-Network-Addr, SIP ones no Caller-Dialplan when unset, etc. The emulator always sends
  the full SIP-style profile, so these are excluded on both sides.
* Other-Leg-* / Other-Type are present only while a channel has a peer, in the recordings and in
  the emulator alike; they are compared as a block (present in some recording of that type).
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest
import trio
import trio.testing

from adapters.freeswitch import codec as c
from adapters.freeswitch.codec import EslParser
from sim.freeswitch import FreeSwitchEmulator

ROOT = Path(__file__).resolve().parents[2]

GREENSWITCH_CLIENT = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import json, sys, gevent
    from greenswitch.esl import InboundESL

    port = int(sys.argv[1])
    con = InboundESL(host="127.0.0.1", port=port, password="ClueCon")
    con.connect()
    status = con.send("api status").data
    seen = []
    done = gevent.event.Event()

    def on_event(ev):
        seen.append(dict(ev.headers))
        if ev.headers.get("Event-Name") == "CHANNEL_ANSWER":
            done.set()

    con.register_handle("*", on_event)
    reply = con.send("event plain ALL").data
    print(json.dumps({"ready": True, "status": status, "reply": reply}), flush=True)
    ok = done.wait(timeout=15)
    con.stop()
    print(json.dumps({"answered": bool(ok), "events": seen}), flush=True)
""")


def test_greenswitch_inbound_client_against_the_emulator() -> None:
    pytest.importorskip("greenswitch")

    async def main():
        emu = FreeSwitchEmulator(heartbeat=None)
        async with trio.open_nursery() as n:
            port = await n.start(emu.run)
            with trio.fail_after(30):
                proc = await trio.lowlevel.open_process(
                    [sys.executable, "-c", GREENSWITCH_CLIENT, str(port)],
                    stdout=__import__("subprocess").PIPE, cwd=str(ROOT))
                buf = b""
                lines = []
                try:
                    while len(lines) < 2:
                        chunk = await proc.stdout.receive_some(65536)
                        if not chunk:
                            break
                        buf += chunk
                        while b"\n" in buf:
                            line, buf = buf.split(b"\n", 1)
                            lines.append(json.loads(line))
                            if len(lines) == 1:
                                ch = await emu.place_inbound_call("1001", "5000", "Alice")
                                emu.queue_app(ch.uuid, "answer", "")
                    await proc.wait()
                finally:
                    if proc.returncode is None:
                        proc.kill()
                        with trio.CancelScope(shield=True):
                            await proc.wait()
            n.cancel_scope.cancel()
        return proc.returncode, lines, ch

    rc, lines, ch = trio.run(main)
    assert rc == 0, lines
    first, second = lines
    assert first["status"].startswith("UP ") and "is ready" in first["status"]
    assert first["reply"] == "+OK event listener enabled plain"
    assert second["answered"] is True
    names = [e.get("Event-Name") for e in second["events"]]
    assert "CHANNEL_CREATE" in names and "CHANNEL_ANSWER" in names
    answer = next(e for e in second["events"] if e.get("Event-Name") == "CHANNEL_ANSWER")
    assert answer["Unique-ID"] == ch.uuid
    assert answer["Caller-Caller-ID-Name"] == "Alice"
    assert answer["Answer-State"] == "answered"


# ----------------------------------------------------------------------- header names vs real FS

def _shared() -> Path | None:
    cands = [ROOT.parent / "shared"]
    if os.environ.get("CALLENGINE_SHARED"):
        cands.append(Path(os.environ["CALLENGINE_SHARED"]))
    for cand in cands:
        if (cand / "esl" / "captures" / "fs-1.10.12").is_dir():
            return cand
    return None


ENDPOINT_DEPENDENT = {
    "Caller-Username", "Caller-Network-Addr", "Caller-Transfer-Source", "Caller-RDNIS",
    "Caller-Dialplan", "Caller-Caller-ID-Name", "Caller-Orig-Caller-ID-Name",
    "Caller-Callee-ID-Name", "Caller-Callee-ID-Number", "Channel-Presence-ID",
    "Channel-Call-State-Number", "Presence-Data-Cols",
}


def _key(f) -> str:
    return f"CUSTOM::{f.subclass}" if f.name == "CUSTOM" else f.name


def _names(f) -> frozenset[str]:
    out = set()
    for n in f.event.headers:
        if n.startswith("variable_") or n in ENDPOINT_DEPENDENT:
            continue
        if n.startswith("Other-Leg-") or n == "Other-Type":
            n = "<Other-Leg block>"
        out.add(n)
    return frozenset(out)


def _recorded_sets(shared: Path) -> dict[str, set[frozenset[str]]]:
    out: dict[str, set[frozenset[str]]] = defaultdict(set)
    for path in sorted((shared / "esl" / "captures" / "fs-1.10.12").glob("[0-9]*.txt")):
        if path.name.endswith(".sent.txt"):
            continue
        p = EslParser()
        p.receive_data(path.read_bytes().split(b"\n", 1)[1])
        for f in p:
            if f.event is not None and f.event.format == "plain" and f.content_type != "command/reply":
                out[_key(f)].add(_names(f))
    return out


async def _scenario(emu: FreeSwitchEmulator, cl_stream) -> list:
    """Drive the emulator through every event type it can emit; return the event frames."""
    p = EslParser()
    frames = []

    async def reader():
        while True:
            data = await cl_stream.receive_some(65536)
            if not data:
                return
            p.receive_data(data)
            frames.extend(p)

    async with trio.open_nursery() as n:
        n.start_soon(reader)
        await cl_stream.send_all(c.auth("ClueCon") + c.event("plain", "ALL"))
        await cl_stream.send_all(c.api("status"))
        with trio.fail_after(5):
            while not any(f.content_type == "api/response" for f in frames):
                await trio.sleep(0.01)  # virtual time: wait until the subscription is live
        emu.register_phone("1000")
        emu.unregister_phone("1000")
        a = await emu.place_inbound_call("1001", "5000", "Alice", answer=True)
        await trio.sleep(1)
        await cl_stream.send_all(c.bgapi("originate sofia/internal/2001@127.0.0.1 &park"))
        emu.queue_app(a.uuid, "playback", "/tmp/x.wav")
        emu.queue_app(a.uuid, "record_session", "/tmp/r.wav")
        await trio.sleep(3)
        await emu.send_dtmf(a.uuid, "1#")
        await cl_stream.send_all(c.api(f"uuid_hold {a.uuid}") + c.api(f"uuid_hold off {a.uuid}"))
        await trio.sleep(1)
        emu.queue_app(a.uuid, "bridge", "sofia/internal/2002@127.0.0.1")
        await trio.sleep(2)
        await emu.hangup(a.uuid, "NORMAL_CLEARING")
        await trio.sleep(25)  # a heartbeat
        n.cancel_scope.cancel()
    return [f for f in frames if f.event is not None]


def test_emulator_event_header_names_match_real_freeswitch() -> None:
    shared = _shared()
    if shared is None:
        pytest.skip("shared/esl/captures/fs-1.10.12 not found (set CALLENGINE_SHARED)")
    recorded = _recorded_sets(shared)

    async def main():
        emu = FreeSwitchEmulator(heartbeat=20.0)
        async with trio.open_nursery() as n:
            await n.start(emu.run)
            frames = await _scenario(emu, emu.open_client_stream())
            n.cancel_scope.cancel()
        return frames

    frames = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    emitted: dict[str, set[frozenset[str]]] = defaultdict(set)
    for f in frames:
        emitted[_key(f)].add(_names(f))
    must_cover = {"CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_EXECUTE", "CHANNEL_EXECUTE_COMPLETE",
                  "CHANNEL_PARK", "CHANNEL_BRIDGE", "CHANNEL_UNBRIDGE", "CHANNEL_HANGUP",
                  "CHANNEL_HANGUP_COMPLETE", "CHANNEL_DESTROY", "CHANNEL_HOLD", "CHANNEL_UNHOLD",
                  "DTMF", "PLAYBACK_START", "PLAYBACK_STOP", "RECORD_START", "RECORD_STOP",
                  "BACKGROUND_JOB", "API", "HEARTBEAT", "CHANNEL_ORIGINATE", "CHANNEL_PROGRESS",
                  "CHANNEL_OUTGOING", "CHANNEL_CALLSTATE", "CHANNEL_STATE",
                  "CUSTOM::sofia::register", "CUSTOM::sofia::unregister"}
    assert must_cover <= set(emitted), must_cover - set(emitted)
    problems = []
    for key, sets in sorted(emitted.items()):
        if key not in recorded:
            continue  # e.g. sofia::expire: not in the recordings (layout of sofia::unregister)
        for ours in sets:
            # equal to some recorded occurrence, ignoring where the peer block is present
            if not any(ours - {"<Other-Leg block>"} == r - {"<Other-Leg block>"}
                       for r in recorded[key]):
                best = min(recorded[key], key=lambda r: len(r ^ ours))
                problems.append(f"{key}: extra {sorted(ours - best)} missing {sorted(best - ours)}")
    assert not problems, "\n".join(problems)
