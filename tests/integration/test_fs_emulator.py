"""The FreeSWITCH emulator, driven by a raw ESL client built on our codec.

Rules: TCP only on 127.0.0.1 with port 0; tests that depend on durations (heartbeat, playback,
linger, ring/answer delays) run under ``MockClock(autojump_threshold=0)`` over the emulator's
in-memory client stream, so no test sleeps for real; every wait is bounded by ``fail_after``.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import trio
import trio.testing

from adapters.freeswitch import codec as c
from adapters.freeswitch.codec import EslParser, Frame
from sim.freeswitch import FreeSwitchEmulator


class Client:
    """Minimal ESL client: replies are returned in order, events are collected."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.parser = EslParser(eager_events=True)
        self.events: list[Frame] = []
        self.frames: list[Frame] = []
        self.eof = False

    async def frame(self) -> Frame | None:
        while True:
            f = self.parser.next_frame()
            if f is not None:
                self.frames.append(f)
                return f
            if self.eof:
                return None
            data = await self.stream.receive_some(65536)
            if not data:
                self.eof = True
            self.parser.receive_data(data)

    async def reply(self) -> Frame:
        """Next non-event frame; events seen meanwhile are kept in self.events."""
        with trio.fail_after(10):
            while True:
                f = await self.frame()
                assert f is not None, "connection closed while waiting for a reply"
                if f.event is not None and f.content_type != "command/reply":
                    self.events.append(f)
                    continue
                return f

    async def cmd(self, data: bytes) -> Frame:
        await self.stream.send_all(data)
        return await self.reply()

    async def event(self, pred: Callable[[Frame], bool], timeout: float = 10) -> Frame:
        for i, f in enumerate(self.events):
            if pred(f):
                del self.events[: i + 1]
                return f
        self.events.clear()
        with trio.fail_after(timeout):
            while True:
                f = await self.frame()
                assert f is not None, "connection closed while waiting for an event"
                if f.event is not None and pred(f):
                    return f

    async def drain_until_close(self, limit: int = 10_000) -> list[Frame]:
        out = []
        with trio.fail_after(10):
            for _ in range(limit):
                f = await self.frame()
                if f is None:
                    return out
                out.append(f)
        raise AssertionError("connection did not close")


def named(name: str, uuid: str | None = None) -> Callable[[Frame], bool]:
    return lambda f: f.name == name and (uuid is None or f.event.unique_id == uuid)


async def tcp_client(emu: FreeSwitchEmulator, password: str = "ClueCon") -> Client:
    cl = Client(await trio.open_tcp_stream("127.0.0.1", emu.port))
    assert (await cl.reply()).content_type == "auth/request"
    if password is not None:
        assert (await cl.cmd(c.auth(password))).reply_text == "+OK accepted"
    return cl


async def mem_client(emu: FreeSwitchEmulator) -> Client:
    cl = Client(emu.open_client_stream())
    assert (await cl.reply()).content_type == "auth/request"
    assert (await cl.cmd(c.auth("ClueCon"))).reply_text == "+OK accepted"
    return cl


def run_mock(fn, **emu_kw):
    async def main():
        emu = FreeSwitchEmulator(**emu_kw)
        async with trio.open_nursery() as n:
            await n.start(emu.run)
            with trio.fail_after(600):  # virtual seconds
                await fn(emu)
            n.cancel_scope.cancel()
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def run_real(fn, **emu_kw):
    async def main():
        emu = FreeSwitchEmulator(**emu_kw)
        async with trio.open_nursery() as n:
            await n.start(emu.run)
            with trio.fail_after(20):
                await fn(emu)
            n.cancel_scope.cancel()
    trio.run(main)


# ------------------------------------------------------------------------------ handshake

def test_auth_ok_wrong_password_and_command_before_auth() -> None:
    async def body(emu):
        assert emu.host == "127.0.0.1" and emu.port > 0
        cl = await tcp_client(emu)
        assert (await cl.cmd(c.api("status"))).body.startswith(b"UP ")
        # command before auth: -ERR command not found, connection stays open
        cl2 = await tcp_client(emu, password=None)
        assert (await cl2.cmd(c.api("status"))).reply_text == "-ERR command not found"
        assert (await cl2.cmd(c.event("plain", "ALL"))).reply_text == "-ERR command not found"
        assert (await cl2.cmd(c.auth("ClueCon"))).reply_text == "+OK accepted"
        # wrong password: -ERR invalid, disconnect notice, close
        cl3 = await tcp_client(emu, password=None)
        assert (await cl3.cmd(c.auth("nope"))).reply_text == "-ERR invalid"
        rest = await cl3.drain_until_close()
        assert [f.content_type for f in rest] == ["text/disconnect-notice"]
        assert rest[0].body == c.DISCONNECT_NOTICE_BODY
        # exit: +OK bye, notice, close
        assert (await cl.cmd(c.exit())).reply_text == "+OK bye"
        assert [f.content_type for f in await cl.drain_until_close()] == ["text/disconnect-notice"]
    run_real(body)


def test_command_replies_match_recordings() -> None:
    async def body(emu):
        cl = await tcp_client(emu)
        want = [
            (b"foobar\n\n", "-ERR command not found"),
            (b"event plain\n\n", "-ERR no keywords supplied"),
            (c.filter("Unique-ID", "x"), "+OK filter added. [Unique-ID]=[x]"),
            (c.filter_delete("Unique-ID", "x"), "+OK filter deleted. [Unique-ID][x]"),
            (c.nixevent("ALL"), "+OK events nixed"),
            (c.noevents(), "-ERR not listening for events"),
            (c.linger(), "-ERR not controlling a session"),
            (c.nolinger(), "-ERR not controlling a session"),
            (c.getvar("foo"), "-ERR command not found"),
            (c.divert_events(True), "-ERR not controlling a session."),
            (c.log(7), "+OK log level 7 [7]"),
            (c.sendmsg("00000000-0000-0000-0000-000000000000", call_command="hangup"),
             "-ERR invalid session id [00000000-0000-0000-0000-000000000000]"),
            (c.myevents("00000000-0000-0000-0000-000000000000", "plain"), "-ERR invalid uuid"),
            (c.myevents("00000000-0000-0000-0000-000000000000"), "+OK Events Enabled"),
            (c.myevents("00000000-0000-0000-0000-000000000000"), "-ERR aready enabled."),
        ]
        for wire, text in want:
            assert (await cl.cmd(wire)).reply_text == text, wire
        r = await cl.cmd(c.api("nosuchcommand"))
        assert r.body == b"-ERR nosuchcommand Command not found!\n"
        assert (await cl.cmd(c.api("echo"))).body == b"-ERR no reply\n"
        assert (await cl.cmd(c.api("version"))).body.startswith(b"FreeSWITCH Version 1.10.12")
    run_real(body)


# ------------------------------------------------------------------------------ subscriptions

def test_subscriptions_custom_subclasses_filters_and_formats() -> None:
    async def body(emu):
        only_answer = await mem_client(emu)
        assert (await only_answer.cmd(c.event("plain", "CHANNEL_ANSWER"))).ok
        reg = await mem_client(emu)
        assert (await reg.cmd(c.event("json", "CUSTOM", "sofia::register"))).reply_text == \
            "+OK event listener enabled json"
        xml = await mem_client(emu)
        await xml.cmd(c.event("xml", "ALL"))
        filt = await mem_client(emu)
        await filt.cmd(c.event("plain", "ALL"))

        emu.register_phone("1000")
        f = await reg.event(lambda f: f.subclass == "sofia::register")
        assert f.content_type == "text/event-json" and f.event.headers["from-user"] == "1000"
        emu.unregister_phone("1000")  # not subscribed: must not arrive at `reg`

        ch = await emu.place_inbound_call("1001", "5000")
        await filt.cmd(c.filter("Unique-ID", ch.uuid))
        other = await emu.place_inbound_call("1002", "5000")
        emu.queue_app(other.uuid, "answer", "")
        emu.queue_app(ch.uuid, "answer", "")
        a1 = await only_answer.event(named("CHANNEL_ANSWER"))
        a2 = await only_answer.event(named("CHANNEL_ANSWER"))
        assert {a1.event.unique_id, a2.event.unique_id} == {ch.uuid, other.uuid}
        got = await filt.event(named("CHANNEL_ANSWER"))
        assert got.event.unique_id == ch.uuid
        x = await xml.event(named("CHANNEL_ANSWER"))
        assert x.content_type == "text/event-xml" and x.event.headers["Answer-State"] == "answered"

        # nothing else reached only_answer / reg: check via a marker after the fact
        emu.register_phone("1003")
        f = await reg.event(lambda f: f.subclass == "sofia::register")
        assert f.event.headers["from-user"] == "1003"  # the unregister never arrived
        assert all(e.name == "CHANNEL_ANSWER" for e in only_answer.events)
        assert (await only_answer.cmd(c.noevents())).reply_text == \
            "+OK no longer listening for events"
    run_mock(body, heartbeat=None)


# ------------------------------------------------------------------------------ api / bgapi

def test_api_bgapi_and_show_channels_from_live_state() -> None:
    async def body(emu):
        cl = await mem_client(emu)
        await cl.cmd(c.event("plain", "BACKGROUND_JOB", "API"))
        assert (await cl.cmd(c.api("show channels as json"))).body == b'{"row_count":0}\n'
        r = await cl.cmd(c.bgapi("originate {origination_caller_id_number=1001}loopback/7701 &park",
                                 job_uuid="e5c0ffee-0000-4000-8000-00000000c0de"))
        assert r.reply_text == "+OK Job-UUID: e5c0ffee-0000-4000-8000-00000000c0de"
        assert r.headers["Job-UUID"] == "e5c0ffee-0000-4000-8000-00000000c0de"
        job = await cl.event(named("BACKGROUND_JOB"))
        assert job.event.headers["Job-UUID"] == "e5c0ffee-0000-4000-8000-00000000c0de"
        assert job.event.headers["Job-Command"] == "originate"
        leg = job.event.body.split()[1]
        assert job.event.body == f"+OK {leg}\n" and leg in emu.channels
        r = await cl.cmd(c.bgapi("originate error/USER_BUSY &park"))
        assert (await cl.event(named("BACKGROUND_JOB"))).event.body == "-ERR USER_BUSY\n"
        r = await cl.cmd(c.bgapi("originate user/1005 &park"))
        assert (await cl.event(named("BACKGROUND_JOB"))).event.body == "-ERR USER_NOT_REGISTERED\n"

        doc = json.loads((await cl.cmd(c.api("show channels as json"))).body)
        assert doc["row_count"] == 1 and doc["rows"][0]["uuid"] == leg
        assert doc["rows"][0]["cid_num"] == "1001" and doc["rows"][0]["callstate"] == "ACTIVE"
        inbound = await emu.place_inbound_call("2000", "5000")
        await cl.cmd(c.api(f"uuid_bridge {inbound.uuid} {leg}"))
        calls = json.loads((await cl.cmd(c.api("show calls as json"))).body)
        assert calls["row_count"] == 1
        assert {calls["rows"][0]["uuid"], calls["rows"][0]["b_uuid"]} == {inbound.uuid, leg}
        assert (await cl.cmd(c.api(f"uuid_setvar {leg} foo bar baz"))).body == b"+OK\n"
        assert (await cl.cmd(c.api(f"uuid_getvar {leg} foo"))).body == b"bar baz"
        assert (await cl.cmd(c.api(f"uuid_getvar {leg} nope"))).body == b"_undef_"
        dump = (await cl.cmd(c.api(f"uuid_dump {leg} json"))).body
        assert json.loads(dump)["Unique-ID"] == leg
        assert (await cl.cmd(c.api("hupall NORMAL_CLEARING"))).body == \
            b"+OK hangup all channels with cause NORMAL_CLEARING\n"
        api_ev = await cl.event(lambda f: f.name == "API"
                                and f.event.headers["API-Command"] == "hupall")
        assert api_ev.event.headers["API-Command-Argument"] == "NORMAL_CLEARING"
        for _ in range(100):
            if not emu.channels:
                break
            await trio.sleep(0.01)
        assert (await cl.cmd(c.api("show calls as json"))).body == b'{"row_count":0}\n'
    run_mock(body, heartbeat=None)


def test_originate_busy_no_answer_and_timeout() -> None:
    async def body(emu):
        cl = await mem_client(emu)
        emu.set_endpoint("7708", outcome="no_answer")
        emu.set_endpoint("7709", outcome="busy")
        emu.set_endpoint("7710", answer_after=5.0)
        t0 = trio.current_time()
        r = await cl.cmd(c.api("originate {originate_timeout=2}loopback/7708 &park"))
        assert r.body == b"-ERR NO_ANSWER\n" and trio.current_time() - t0 == pytest.approx(2, 0.1)
        assert (await cl.cmd(c.api("originate sofia/internal/7709 &park"))).body == \
            b"-ERR USER_BUSY\n"
        t0 = trio.current_time()
        r = await cl.cmd(c.api("originate sofia/internal/7710 &park"))
        assert r.body.startswith(b"+OK ") and trio.current_time() - t0 >= 5
    run_mock(body, heartbeat=None)


# ------------------------------------------------------------------------------ sendmsg

def test_sendmsg_execute_playback_with_event_uuid_and_duration() -> None:
    async def body(emu):
        cl = await mem_client(emu)
        await cl.cmd(c.event("plain", "ALL"))
        emu.playback_durations["/tmp/long.wav"] = 7.5
        ch = await emu.place_inbound_call("1001", "5000")
        r = await cl.cmd(c.sendmsg(ch.uuid, app="answer"))
        assert r.reply_text == "+OK"
        t0 = trio.current_time()
        r = await cl.cmd(c.sendmsg(ch.uuid, app="playback", arg="/tmp/long.wav", event_lock=True,
                                   event_uuid="app-uuid-1"))
        ex = await cl.event(lambda f: f.name == "CHANNEL_EXECUTE"
                            and f.event.headers["Application"] == "playback")
        assert ex.event.headers["Application-UUID"] == "app-uuid-1"
        assert ex.event.headers["Application-Data"] == "/tmp/long.wav"
        start = await cl.event(named("PLAYBACK_START"))
        assert start.event.headers["Playback-File-Path"] == "/tmp/long.wav"
        stop = await cl.event(named("PLAYBACK_STOP"))
        assert stop.event.headers["Playback-Status"] == "done"
        done = await cl.event(named("CHANNEL_EXECUTE_COMPLETE"))
        assert done.event.headers["Application-UUID"] == "app-uuid-1"
        assert done.event.headers["Application-Response"] == "FILE PLAYED"
        assert trio.current_time() - t0 == pytest.approx(7.5, abs=0.1)
        # an app arg sent as a body, then sendmsg hangup with a cause
        await cl.cmd(c.sendmsg(ch.uuid, app="set", body="x_var=from body"))
        await cl.event(lambda f: f.name == "CHANNEL_EXECUTE_COMPLETE"
                       and f.event.headers["Application"] == "set")
        assert ch.variables["x_var"] == "from body"
        await cl.cmd(c.sendmsg(ch.uuid, call_command="hangup", hangup_cause="USER_BUSY"))
        h = await cl.event(named("CHANNEL_HANGUP"))
        assert h.event.headers["Hangup-Cause"] == "USER_BUSY"
    run_mock(body, heartbeat=None)


def test_dtmf_play_and_get_digits_hold_record() -> None:
    async def body(emu):
        cl = await mem_client(emu)
        await cl.cmd(c.event("plain", "ALL"))
        ch = await emu.place_inbound_call("1001", "5000", answer=True)
        await cl.cmd(c.sendmsg(ch.uuid, app="play_and_get_digits",
                               arg="2 5 1 5000 # /tmp/prompt.wav /tmp/bad.wav got_digits \\d+"))
        await cl.event(named("PLAYBACK_STOP"))
        await emu.send_dtmf(ch.uuid, "42#")
        d = await cl.event(named("DTMF"))
        assert d.event.headers["DTMF-Digit"] == "4"
        await cl.event(lambda f: f.name == "CHANNEL_EXECUTE_COMPLETE"
                       and f.event.headers["Application"] == "play_and_get_digits")
        assert (await cl.cmd(c.api(f"uuid_getvar {ch.uuid} got_digits"))).body == b"42"
        assert (await cl.cmd(c.api(f"uuid_hold off {ch.uuid}"))).body == b"-ERR Operation failed\n"
        assert (await cl.cmd(c.api(f"uuid_hold {ch.uuid}"))).body == b"+OK Success\n"
        assert (await cl.event(named("CHANNEL_HOLD"))).event.headers["Channel-Call-State"] == "HELD"
        assert (await cl.cmd(c.api(f"uuid_hold toggle {ch.uuid}"))).body == b"+OK Success\n"
        await cl.event(named("CHANNEL_UNHOLD"))
        r = await cl.cmd(c.api(f"uuid_record {ch.uuid} start /tmp/rec.wav"))
        assert r.body == b"+OK Success\n"
        assert (await cl.event(named("RECORD_START"))).event.headers["Record-File-Path"] == \
            "/tmp/rec.wav"
        await cl.cmd(c.api(f"uuid_kill {ch.uuid}"))
        assert (await cl.event(named("RECORD_STOP"))).event.headers["Record-File-Path"] == \
            "/tmp/rec.wav"
    run_mock(body, heartbeat=None)


# ------------------------------------------------------------------------------ a full call

def test_inbound_call_answered_bridged_and_hung_up_in_freeswitch_order() -> None:
    async def body(emu):
        cl = await mem_client(emu)
        await cl.cmd(c.event("plain", "ALL"))
        a = await emu.place_inbound_call("1001", "5000", caller_name="Alice")
        await cl.event(named("CHANNEL_PARK", a.uuid))
        await cl.cmd(c.sendmsg(a.uuid, app="answer"))
        await cl.cmd(c.sendmsg(a.uuid, app="bridge", arg="{origination_caller_id_number=5000}"
                                                        "sofia/internal/2001@127.0.0.1"))
        br = await cl.event(named("CHANNEL_BRIDGE"))
        b_uuid = br.event.headers["Bridge-B-Unique-ID"]
        assert br.event.headers["Bridge-A-Unique-ID"] == a.uuid
        assert br.event.headers["Other-Leg-Unique-ID"] == b_uuid
        assert br.event.headers["Other-Type"] == "originatee"
        r = await cl.cmd(c.api(f"uuid_kill {b_uuid} NORMAL_CLEARING"))
        assert r.body == b"+OK\n"
        seen = [(f.name, f.event.unique_id) for f in cl.events]
        cl.events.clear()
        with trio.fail_after(30):
            while sum(1 for n, _ in seen if n == "CHANNEL_DESTROY") < 2:
                f = await cl.frame()
                if f.event is not None:
                    seen.append((f.name, f.event.unique_id))
        order = [(n, u) for n, u in seen if n in (
            "CHANNEL_HANGUP", "CHANNEL_UNBRIDGE", "CHANNEL_EXECUTE_COMPLETE",
            "CHANNEL_HANGUP_COMPLETE", "CHANNEL_DESTROY")]
        names = [n for n, _ in order]
        assert names.index("CHANNEL_HANGUP") < names.index("CHANNEL_UNBRIDGE")
        assert order[0] == ("CHANNEL_HANGUP", b_uuid)
        assert ("CHANNEL_HANGUP", a.uuid) in order
        assert names.index("CHANNEL_UNBRIDGE") < order.index(("CHANNEL_HANGUP", a.uuid))
        first_complete = names.index("CHANNEL_HANGUP_COMPLETE")
        assert all(n != "CHANNEL_HANGUP" for n in names[first_complete:])
        assert names.index("CHANNEL_EXECUTE_COMPLETE") < first_complete
        assert names[-2:] == ["CHANNEL_DESTROY", "CHANNEL_DESTROY"]
        assert {u for n, u in order if n == "CHANNEL_HANGUP_COMPLETE"} == {a.uuid, b_uuid}
        assert not emu.channels
    run_mock(body, heartbeat=None)


def test_heartbeat_every_n_seconds() -> None:
    async def body(emu):
        cl = await mem_client(emu)
        await cl.cmd(c.event("plain", "HEARTBEAT"))
        h1 = await cl.event(named("HEARTBEAT"), timeout=30)
        t1 = trio.current_time()
        h2 = await cl.event(named("HEARTBEAT"), timeout=30)
        assert trio.current_time() - t1 == pytest.approx(20, abs=0.01)
        assert h1.event.headers["Event-Info"] == "System Ready"
        assert int(h2.event.headers["Event-Sequence"]) > int(h1.event.headers["Event-Sequence"])
        assert h2.event.headers["FreeSWITCH-Version"] == "1.10.12-release~64bit"
    run_mock(body, heartbeat=20.0)


# ------------------------------------------------------------------------------ outbound mode

async def _outbound_session(emu, full: bool, linger: int | None, nursery):
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    accepted = trio.Event()
    holder: dict = {}

    async def accept():
        stream = await listeners[0].accept()
        holder["stream"] = stream
        accepted.set()

    nursery.start_soon(accept)
    ch = await emu.place_inbound_call("1001", "7705", socket=("127.0.0.1", port), socket_full=full)
    with trio.fail_after(10):
        await accepted.wait()
    await listeners[0].aclose()
    return ch, Client(holder["stream"])


def test_outbound_socket_connect_myevents_linger_sendmsg_exit() -> None:
    async def body(emu):
        async with trio.open_nursery() as n:
            ch, cl = await _outbound_session(emu, True, None, n)
            r = await cl.cmd(c.connect())
            assert r.reply_text == "+OK\n" and r.name == "CHANNEL_DATA"
            assert r.event.unique_id == ch.uuid and r.headers["Control"] == "full"
            assert "Content-Length" not in r.headers
            assert (await cl.cmd(c.myevents())).reply_text == "+OK Events Enabled"
            assert (await cl.cmd(c.linger())).reply_text == "+OK will linger"
            assert (await cl.cmd(c.getvar("caller_id_number"))).reply_text == "1001"
            assert (await cl.cmd(c.sendmsg(app="answer"))).reply_text == "+OK"
            await cl.event(named("CHANNEL_ANSWER", ch.uuid))
            assert (await cl.cmd(c.sendmsg(call_command="hangup"))).reply_text == "+OK"
            await cl.event(named("CHANNEL_HANGUP_COMPLETE", ch.uuid))
            notice = await cl.reply()
            assert notice.headers["Content-Disposition"] == "linger"
            assert notice.headers["Linger-Time"] == "-1"
            assert (await cl.cmd(c.exit())).reply_text == "+OK bye"
            rest = await cl.drain_until_close()
            assert rest[-1].headers["Content-Disposition"] == "disconnect"
            assert rest[-1].headers["Controlled-Session-UUID"] == ch.uuid
            assert not any(f.name == "CHANNEL_DESTROY" for f in cl.frames)
    run_real(body, heartbeat=None)


def test_outbound_socket_not_full_and_no_linger_closes_at_hangup() -> None:
    async def body(emu):
        async with trio.open_nursery() as n:
            ch, cl = await _outbound_session(emu, False, None, n)
            r = await cl.cmd(c.connect())
            assert r.headers["Control"] == "single-channel"
            assert (await cl.cmd(c.api("status"))).reply_text == "-ERR command not found"
            assert (await cl.cmd(c.bgapi("status"))).reply_text == "-ERR command not found"
            assert (await cl.cmd(c.myevents())).reply_text == "+OK Events Enabled"
            await cl.cmd(c.sendmsg(app="answer"))
            await cl.cmd(c.sendmsg(call_command="hangup"))
            rest = await cl.drain_until_close()
            notices = [f for f in rest if f.content_type == "text/disconnect-notice"]
            assert len(notices) == 1 and notices[0].headers["Content-Disposition"] == "disconnect"
            assert not any(f.name == "CHANNEL_HANGUP_COMPLETE" for f in rest)
    run_real(body, heartbeat=None)


# ------------------------------------------------------------------------------ faults

def test_fault_drop_connection() -> None:
    async def body(emu):
        cl = await tcp_client(emu)
        assert emu.drop_connections() == 1
        assert await cl.drain_until_close() == []
    run_real(body)


def test_fault_malformed_frame_is_a_protocol_error_for_the_client() -> None:
    async def body(emu):
        cl = await tcp_client(emu)
        emu.send_malformed()
        with pytest.raises(c.RemoteProtocolError, match="non-numeric Content-Length"):
            await cl.reply()
    run_real(body)


def test_fault_duplicate_events() -> None:
    async def body(emu):
        cl = await mem_client(emu)
        await cl.cmd(c.event("plain", "CUSTOM", "sofia::register"))
        emu.duplicate_events(1)
        emu.register_phone("1000")
        emu.register_phone("1001")
        got = [(await cl.event(lambda f: True)).event.headers for _ in range(3)]
        assert got[0] == got[1] and got[2]["from-user"] == "1001"
    run_mock(body, heartbeat=None)


def test_fault_stall_delays_output_but_loses_nothing() -> None:
    async def body(emu):
        cl = await mem_client(emu)
        emu.stall(8.0)
        t0 = trio.current_time()
        r = await cl.cmd(c.api("status"))
        assert r.body.startswith(b"UP ") and trio.current_time() - t0 >= 8.0
    run_mock(body, heartbeat=None)


def test_garbage_from_client_closes_only_that_connection() -> None:
    async def body(emu):
        bad = await tcp_client(emu)
        good = await tcp_client(emu)
        await bad.stream.send_all(b"sendevent X\nContent-Length: nope\n\n")
        assert await bad.drain_until_close() == []
        assert (await good.cmd(c.api("status"))).body.startswith(b"UP ")
    run_real(body)


def test_cli_parser_defaults_bind_loopback() -> None:
    import argparse

    from sim.freeswitch import cli

    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd")
    cli.add_parser(sub)
    args = ap.parse_args(["fs-emulator", "--port", "0", "--heartbeat", "5",
                          "--calls-per-second", "2"])
    assert args.func is cli.run
    emu = cli.build(args)
    assert (emu.host, emu.requested_port, emu.password, emu.heartbeat, emu.calls_per_second) == \
        ("127.0.0.1", 0, "ClueCon", 5.0, 2.0)

    async def generated_calls(emu):
        cl = await mem_client(emu)
        await cl.cmd(c.event("plain", "CHANNEL_PARK"))
        first = await cl.event(named("CHANNEL_PARK"))
        second = await cl.event(named("CHANNEL_PARK"))
        assert first.event.unique_id != second.event.unique_id
    run_mock(generated_calls, heartbeat=None, calls_per_second=2.0)
