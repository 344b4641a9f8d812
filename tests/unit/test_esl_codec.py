"""Unit tests of the sans-IO ESL codec: one table row per frame type and per encoder.

Rules: pure byte-level tests, no sockets, no shared/ captures (those are integration tests).
Expected bytes are copied from the real FreeSWITCH 1.10.12 recordings where one exists.
"""

from __future__ import annotations

import pytest

from adapters.freeswitch import codec as c
from adapters.freeswitch.codec import EslParser, RemoteProtocolError


def ev(ctype: str, payload: bytes) -> bytes:
    """An event frame as FreeSWITCH writes it: Content-Length FIRST, then Content-Type."""
    return b"Content-Length: %d\nContent-Type: %s\n\n" % (len(payload), ctype.encode()) + payload


def parse_all(data: bytes, **kw) -> list[c.Frame]:
    p = EslParser(**kw)
    p.receive_data(data)
    p.receive_data(b"")
    frames = list(p)
    assert p.closed
    return frames


# ------------------------------------------------------------------------------- frame types

BG_PLAIN_INNER = (
    b"Event-Name: BACKGROUND_JOB\nCore-UUID: x\nJob-UUID: 7d6594c1\n"
    b"Job-Command: originate\nJob-Command-Arg: user/1000%20%26park\nContent-Length: 25\n\n"
    b"-ERR NO_ROUTE_DESTINATION\n"
)[:-1]  # 25 bytes of body: "-ERR NO_ROUTE_DESTINATION"

FRAMES = [
    # (id, wire bytes, content type, checker)
    ("auth_request", b"Content-Type: auth/request\n\n", "auth/request",
     lambda f: f.body == b"" and f.event is None),
    ("command_reply", b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n", "command/reply",
     lambda f: f.reply_text == "+OK accepted" and f.ok),
    ("bgapi_reply",
     b"Content-Type: command/reply\nReply-Text: +OK Job-UUID: e5c0ffee-1\nJob-UUID: e5c0ffee-1\n\n",
     "command/reply",
     lambda f: f.headers["Job-UUID"] == "e5c0ffee-1"
     and f.reply_text == "+OK Job-UUID: e5c0ffee-1"),
    ("api_response", b"Content-Type: api/response\nContent-Length: 38\n\n"
     b"-ERR nosuchcommand Command not found!\n", "api/response",
     lambda f: f.body == b"-ERR nosuchcommand Command not found!\n" and not f.ok),
    ("api_no_newline", b"Content-Type: api/response\nContent-Length: 10\n\n1795315762",
     "api/response", lambda f: f.body == b"1795315762"),
    ("event_plain", ev("text/event-plain",
     b"Event-Name: DTMF\nDTMF-Digit: %23\nCaller-Caller-ID-Name: M%C3%BCller\nX: a%20b\n\n"),
     "text/event-plain",
     lambda f: f.event.headers == {"Event-Name": "DTMF", "DTMF-Digit": "#",
                                   "Caller-Caller-ID-Name": "Müller", "X": "a b"}
     and f.name == "DTMF" and f.event.body == ""),
    ("event_plain_body", ev("text/event-plain", BG_PLAIN_INNER), "text/event-plain",
     lambda f: f.event.body == "-ERR NO_ROUTE_DESTINATION" and f.name == "BACKGROUND_JOB"
     and f.event.headers["Job-Command-Arg"] == "user/1000 &park"),
    ("event_custom", ev("text/event-plain",
     b"Event-Subclass: conference%3A%3Amaintenance\nEvent-Name: CUSTOM\n\n"),
     "text/event-plain",
     lambda f: f.name == "CUSTOM" and f.subclass == "conference::maintenance"),
    ("event_json", ev("text/event-json",
     b'{"Event-Name":"BACKGROUND_JOB","Job-UUID":"b3","A":["x","y"],"Content-Length":"4",'
     b'"_body":"+OK\\n"}'), "text/event-json",
     lambda f: f.name == "BACKGROUND_JOB" and f.event.body == "+OK\n"
     and f.event.headers["A"] == ["x", "y"] and "_body" not in f.event.headers),
    ("event_xml", ev("text/event-xml",
     b"<event>\n  <headers>\n    <Event-Name>API</Event-Name>\n"
     b"    <FreeSWITCH-IPv6>fd00%3A%3A2</FreeSWITCH-IPv6>\n  </headers>\n"
     b"  <Content-Length>4</Content-Length>\n  <body>+OK\n  </body>\n</event>"),
     "text/event-xml",
     lambda f: f.name == "API" and f.event.headers["FreeSWITCH-IPv6"] == "fd00::2"
     and f.event.body == "+OK\n"),
    ("log_data", b"Content-Type: log/data\nContent-Length: 5\nLog-Level: 6\nText-Channel: 3\n"
     b"Log-File: a.c\nLog-Func: f\nLog-Line: 1\nUser-Data: \n\nhello", "log/data",
     lambda f: f.body == b"hello" and f.headers["User-Data"] == "" and f.headers["Log-Level"] == "6"),
    ("disconnect_notice", c.disconnect_notice(), "text/disconnect-notice",
     lambda f: f.body == c.DISCONNECT_NOTICE_BODY and len(f.body) == 67),
    ("disconnect_session", c.disconnect_notice("u-1"), "text/disconnect-notice",
     lambda f: f.headers["Controlled-Session-UUID"] == "u-1"
     and f.headers["Content-Disposition"] == "disconnect"),
    ("linger_notice", b"Content-Type: text/disconnect-notice\nControlled-Session-UUID: u\n"
     b"Content-Disposition: linger\nChannel-Name: loopback/7705-b\nLinger-Time: -1\n"
     b"Content-Length: 0\n\n", "text/disconnect-notice",
     lambda f: f.body == b"" and f.headers["Linger-Time"] == "-1"
     and f.headers["Channel-Name"] == "loopback/7705-b"),
    ("rude_rejection", c.rude_rejection(), "text/rude-rejection",
     lambda f: f.body == b"Access Denied, go away.\n"),
    ("connect_reply", b"Event-Name: CHANNEL_DATA\nCore-UUID: 28\nChannel-Name: loopback/7705-b\n"
     b"Unique-ID: 5a\nCaller-Caller-ID-Name: Outbound%20Call\nContent-Type: command/reply\n"
     b"Reply-Text: %2BOK%0A\nSocket-Mode: async\nControl: full\n\n", "command/reply",
     lambda f: f.reply_text == "+OK\n" and f.ok and f.name == "CHANNEL_DATA"
     and f.event.headers["Caller-Caller-ID-Name"] == "Outbound Call"
     and f.headers["Control"] == "full"),
]


@pytest.mark.parametrize("wire,ctype,check", [r[1:] for r in FRAMES], ids=[r[0] for r in FRAMES])
def test_each_frame_type(wire: bytes, ctype: str, check) -> None:
    (frame,) = parse_all(wire)
    assert frame.content_type == ctype
    assert check(frame)
    # the same frame preceded by blank lines and written with CRLF still parses the same
    (again,) = parse_all(b"\n\r\n" + wire)
    assert again == frame


def test_crlf_header_block_tolerated() -> None:
    (f,) = parse_all(b"Content-Type: command/reply\r\nReply-Text: +OK\r\n\r\n")
    assert f.reply_text == "+OK"


def test_incremental_bytes_and_eof() -> None:
    wire = b"".join(r[1] for r in FRAMES)
    whole = parse_all(wire)
    p = EslParser()
    got = []
    for i in range(len(wire)):
        p.receive_data(wire[i:i + 1])
        got.extend(p)
    p.receive_data(b"")
    assert p.next_frame() is None and p.closed
    assert got == whole and len(got) == len(FRAMES)


def test_first_duplicate_wins_like_freeswitch() -> None:
    inner = b"Event-Name: CUSTOM\nContent-Length: 3\nX: 1\nContent-Length: 3\n\nabc"
    (f,) = parse_all(ev("text/event-plain", inner))
    assert f.event.body == "abc" and f.event.headers["Content-Length"] == "3"


# ------------------------------------------------------------------------------- errors

ERRORS = [
    ("non_numeric_cl", b"Content-Type: api/response\nContent-Length: 12a\n\n", "non-numeric"),
    ("underscore_cl", b"Content-Type: api/response\nContent-Length: 1_0\n\n", "non-numeric"),
    ("negative_cl", b"Content-Type: api/response\nContent-Length: -1\n\n", "non-numeric"),
    ("too_big_cl", b"Content-Type: api/response\nContent-Length: 99999999\n\n", "exceeds"),
    ("no_colon", b"Content-Type: command/reply\nReply-Text +OK\n\n", "without ': '"),
    ("no_content_type", b"Reply-Text: +OK\n\n", "without Content-Type"),
    ("bad_json", ev("text/event-json", b'{"a":'), "JSON"),
    ("json_not_object", ev("text/event-json", b"[]"), "not an object"),
    ("bad_xml", ev("text/event-xml", b"<event><"), "XML"),
    ("inner_cl_short", ev("text/event-plain",
     b"Event-Name: X\nContent-Length: 9\n\nab"), "inner Content-Length"),
    ("inner_cl_bad", ev("text/event-plain",
     b"Event-Name: X\nContent-Length: z9\n\nab"), "non-numeric inner"),
    ("truncated_body", b"Content-Type: api/response\nContent-Length: 10\n\nabc", "closed inside a body"),
    ("truncated_head", b"Content-Type: api/resp", "closed inside a header block"),
]


@pytest.mark.parametrize("wire,msg", [r[1:] for r in ERRORS], ids=[r[0] for r in ERRORS])
def test_errors_are_remote_protocol_errors(wire: bytes, msg: str) -> None:
    p = EslParser(max_body_bytes=1000)
    p.receive_data(wire)
    p.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match=msg):
        p.next_frame()
    with pytest.raises(RemoteProtocolError):  # the parser stays broken
        p.next_frame()


def test_header_block_limit_without_terminator() -> None:
    p = EslParser(max_header_bytes=100)
    p.receive_data(b"Content-Type: x\n" + b"A: b\n" * 30)
    with pytest.raises(RemoteProtocolError, match="header block exceeds 100"):
        p.next_frame()


def test_bad_inner_line_lazy_and_eager() -> None:
    inner = b"Event-Name: X\nbogus line\n\n"
    wire = b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(inner) + inner
    (f,) = parse_all(wire)  # lazy: framing is fine
    assert f.name == "X"
    with pytest.raises(RemoteProtocolError, match="bogus line"):
        f.event.headers  # noqa: B018
    p = EslParser(eager_events=True)
    p.receive_data(wire)
    with pytest.raises(RemoteProtocolError, match="bogus line"):
        p.next_frame()


def test_mispaired_lines_detected() -> None:
    # one line without ': ' and one line with two would pair up in a naive split
    inner = b"Event-Name: X\nnoseparator\nA: b: c\n\n"
    wire = b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(inner) + inner
    p = EslParser(eager_events=True)
    p.receive_data(wire)
    with pytest.raises(RemoteProtocolError, match="noseparator"):
        p.next_frame()


# ------------------------------------------------------------------------------- url coding

@pytest.mark.parametrize("raw,enc", [
    ("+OK\n", "%2BOK%0A"),
    ("conference::maintenance", "conference%3A%3Amaintenance"),
    ("#", "%23"),
    ("Müller", "M%C3%BCller"),
    ("Sun, 22 Nov 2026 02:49:22 GMT", "Sun,%2022%20Nov%202026%2002%3A49%3A22%20GMT"),
    ("tone_stream://%(250,50,440)", "tone_stream%3A//%25(250,50,440)"),
    ("a%20b", "a%20b"),          # %XX with uppercase hex is left alone (no double encoding)
    ("a%2fb", "a%252fb"),        # lowercase hex is not recognised, '%' gets encoded
    ("!$'()*,-./_~", "!$'()*,-./_~"),
    ("\"#%&+:;<=>?@[\\]^`{|}", "%22%23%25%26%2B%3A%3B%3C%3D%3E%3F%40%5B%5C%5D%5E%60%7B%7C%7D"),
    ("\x01\x7f", "%01%7F"),
])
def test_url_encode_like_freeswitch(raw: str, enc: str) -> None:
    assert c.url_encode(raw) == enc


def test_url_decode() -> None:
    assert c.url_decode("%2BOK%0A") == "+OK\n"
    assert c.url_decode("a+b") == "a+b"  # '+' is not a space in switch_url_decode
    assert c.url_decode("M%C3%BCller") == "Müller"
    assert c.url_decode("%ZZ") == "%ZZ"


# ------------------------------------------------------------------------------- client encoders

ENCODERS = [
    (c.auth("ClueCon"), b"auth ClueCon\n\n"),
    (c.event("plain", "ALL"), b"event plain ALL\n\n"),
    (c.event("json"), b"event json ALL\n\n"),
    (c.event("xml", "CHANNEL_ANSWER", "CUSTOM", "conference::maintenance", "sofia::register"),
     b"event xml CHANNEL_ANSWER CUSTOM conference::maintenance sofia::register\n\n"),
    (c.filter("Unique-ID", "x"), b"filter Unique-ID x\n\n"),
    (c.filter_delete("Unique-ID", "x"), b"filter delete Unique-ID x\n\n"),
    (c.filter_delete("Unique-ID"), b"filter delete Unique-ID\n\n"),
    (c.nixevent("ALL"), b"nixevent ALL\n\n"),
    (c.noevents(), b"noevents\n\n"),
    (c.api("status"), b"api status\n\n"),
    (c.bgapi("status"), b"bgapi status\n\n"),
    (c.bgapi("originate loopback/7701 &park", job_uuid="e5c0ffee-0000"),
     b"bgapi originate loopback/7701 &park\nJob-UUID: e5c0ffee-0000\n\n"),
    (c.sendmsg("u1", app="playback", arg="/tmp/a.wav", loops=2, event_lock=True,
               event_uuid="ev-1", async_=True),
     b"sendmsg u1\ncall-command: execute\nexecute-app-name: playback\n"
     b"execute-app-arg: /tmp/a.wav\nloops: 2\nevent-lock: true\nEvent-UUID: ev-1\nasync: true\n\n"),
    (c.sendmsg("u1", app="set", body="a=1\nb=2"),
     b"sendmsg u1\ncall-command: execute\nexecute-app-name: set\ncontent-type: text/plain\n"
     b"Content-Length: 7\n\na=1\nb=2"),
    (c.sendmsg("u1", call_command="hangup", hangup_cause="USER_BUSY"),
     b"sendmsg u1\ncall-command: hangup\nhangup-cause: USER_BUSY\n\n"),
    (c.sendmsg(call_command="unicast", local_ip="127.0.0.1", local_port=8025),
     b"sendmsg\ncall-command: unicast\nlocal-ip: 127.0.0.1\nlocal-port: 8025\n\n"),
    (c.myevents(), b"myevents\n\n"),
    (c.myevents("u1", "json"), b"myevents u1 json\n\n"),
    (c.linger(), b"linger\n\n"),
    (c.linger(2), b"linger 2\n\n"),
    (c.nolinger(), b"nolinger\n\n"),
    (c.resume(), b"resume\n\n"),
    (c.exit(), b"exit\n\n"),
    (c.connect(), b"connect\n\n"),
    (c.log(7), b"log 7\n\n"),
    (c.log("debug"), b"log debug\n\n"),
    (c.nolog(), b"nolog\n\n"),
    (c.sendevent("CUSTOM", {"Event-Subclass": "esl_cap::test", "X-Test-Header": "hello world"},
                 "custom body text\n"),
     b"sendevent CUSTOM\nEvent-Subclass: esl_cap::test\nX-Test-Header: hello world\n"
     b"Content-Length: 17\n\ncustom body text\n"),
    (c.getvar("caller_id_number"), b"getvar caller_id_number\n\n"),
    (c.divert_events(True), b"divert_events on\n\n"),
    (c.divert_events(False), b"divert_events off\n\n"),
]


@pytest.mark.parametrize("got,want", ENCODERS, ids=[w.split(b"\n")[0].decode() for _, w in ENCODERS])
def test_client_encoders(got: bytes, want: bytes) -> None:
    assert got == want
    # and FreeSWITCH's side reads back the same command
    p = c.CommandParser()
    p.receive_data(got)
    cmd = p.next_command()
    assert cmd is not None and cmd.line == want.split(b"\n")[0].decode()
    assert p.next_command() is None


@pytest.mark.parametrize("call", [
    lambda: c.api("status\nevent plain ALL"),
    lambda: c.auth("Clue\r\nCon"),
    lambda: c.bgapi("status", job_uuid="x\ny"),
    lambda: c.sendmsg("u1", app="playback", arg="a\ncall-command: hangup"),
    lambda: c.sendmsg("u1\nx", app="playback"),
    lambda: c.filter("Unique-ID", "x\n\napi status"),
    lambda: c.sendevent("CUSTOM", {"X": "a\nb"}),
    lambda: c.sendevent("CUSTOM", {"X\nY": "a"}),
    lambda: c.sendmsg("u1", app="playback", headers={"a": "b\rc"}),
])
def test_header_injection_refused(call) -> None:
    with pytest.raises(ValueError, match="CR or LF"):
        call()


@pytest.mark.parametrize("call", [
    lambda: c.event("yaml", "ALL"),
    lambda: c.sendmsg("u1"),
    lambda: c.sendmsg("u1", app="x", arg="a", body="b"),
    lambda: c.sendmsg("u1", call_command="dance"),
    lambda: c.api(""),
    lambda: c.log("loud"),
    lambda: c.nixevent(),
])
def test_encoder_argument_errors(call) -> None:
    with pytest.raises(ValueError):
        call()


# ------------------------------------------------------------------------------- server side

def test_serializers_round_trip_each_format() -> None:
    headers = [("Event-Name", "BACKGROUND_JOB"), ("Event-Date-GMT", "Sun, 22 Nov 2026 02:49:22 GMT"),
               ("Job-Command-Arg", "{a=1}loopback/7701 &park"), ("Multi", ["a", "b"]),
               ("Empty", "")]
    for ser, fmt in ((c.serialize_event_plain, "plain"), (c.serialize_event_json, "json"),
                     (c.serialize_event_xml, "xml")):
        (f,) = parse_all(ser(headers, "+OK 37c8\n"))
        assert f.content_type == f"text/event-{fmt}"
        h = f.event.headers
        assert h["Event-Name"] == "BACKGROUND_JOB"
        assert h["Event-Date-GMT"] == "Sun, 22 Nov 2026 02:49:22 GMT"
        assert h["Job-Command-Arg"] == "{a=1}loopback/7701 &park"
        assert f.event.body == "+OK 37c8\n"
        if fmt == "plain":
            assert h["Multi"] == "ARRAY::a|:b" and h["Empty"] == "_undef_"
        else:
            assert h["Multi"] == ["a", "b"]


def test_serialize_event_plain_layout_matches_freeswitch() -> None:
    wire = c.serialize_event_plain([("Event-Name", "API"), ("FreeSWITCH-IPv6", "fd00::2")])
    assert wire == (b"Content-Length: 46\nContent-Type: text/event-plain\n\n"
                    b"Event-Name: API\nFreeSWITCH-IPv6: fd00%3A%3A2\n\n")


def test_server_frames_exact_bytes() -> None:
    assert c.auth_request() == b"Content-Type: auth/request\n\n"
    assert c.command_reply("+OK accepted") == b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n"
    assert c.command_reply("+OK Job-UUID: j", [("Job-UUID", "j")]) == (
        b"Content-Type: command/reply\nReply-Text: +OK Job-UUID: j\nJob-UUID: j\n\n")
    assert c.api_response("+OK\n") == b"Content-Type: api/response\nContent-Length: 4\n\n+OK\n"
    assert c.api_response("") == b"Content-Type: api/response\nContent-Length: 14\n\n-ERR no reply\n"
    assert c.disconnect_notice() == (b"Content-Type: text/disconnect-notice\nContent-Length: 67\n\n"
                                     + c.DISCONNECT_NOTICE_BODY)
    assert c.linger_notice("u", "loopback/7705-b", -1) == (
        b"Content-Type: text/disconnect-notice\nControlled-Session-UUID: u\n"
        b"Content-Disposition: linger\nChannel-Name: loopback/7705-b\nLinger-Time: -1\n"
        b"Content-Length: 0\n\n")
    wire = c.connect_reply([("Event-Name", "CHANNEL_DATA")], "async", "full")
    assert wire.endswith(b"Content-Type: command/reply\nReply-Text: %2BOK%0A\n"
                         b"Socket-Mode: async\nControl: full\n\n")


def test_command_parser_read_packet() -> None:
    p = c.CommandParser()
    p.receive_data(b"\n\nauth ClueCon\r\n\r\nsendevent CUSTOM\nEvent-Subclass: esl_cap::test\n"
                   b"Content-Length: 17\n\ncustom body text\napi status\n\n")
    a, b, s = list(p)
    assert (a.name, a.args) == ("auth", "ClueCon")
    assert b.name == "sendevent" and b.header("event-subclass") == "esl_cap::test"
    assert b.body == b"custom body text\n"
    assert (s.name, s.args, s.headers) == ("api", "status", {})


@pytest.mark.parametrize("wire,msg", [
    (b"sendmsg u\ncall-command\n\n", "without ': '"),
    (b"sendevent X\nContent-Length: x\n\n", "non-numeric"),
    (b"sendevent X\nContent-Length: 99999\n\n", "exceeds"),
])
def test_command_parser_errors(wire: bytes, msg: str) -> None:
    p = c.CommandParser(max_body_bytes=100)
    p.receive_data(wire)
    with pytest.raises(RemoteProtocolError, match=msg):
        p.next_command()
