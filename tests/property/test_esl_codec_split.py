"""Property tests of the ESL codec.

Rules: (1) framing is independent of how TCP segments the stream: any split of a real capture into
chunks yields exactly the frames of a single feed; (2) what the FreeSWITCH-side serializers write,
the client parser reads back unchanged (and the same for client commands through CommandParser);
(3) hostile input (random bytes, mutated captures) only ever raises RemoteProtocolError, also
when every header and body of the resulting events is read.

Captures come from shared/ (see tests/integration/test_esl_captures.py); without them the
split/mutation properties fall back to a synthetic stream built with our own serializers, so the
module always runs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.freeswitch import codec as c
from adapters.freeswitch.codec import EslParser, RemoteProtocolError


def _shared() -> Path | None:
    cands = [Path(__file__).resolve().parents[2].parent / "shared"]
    if os.environ.get("CALLENGINE_SHARED"):
        cands.append(Path(os.environ["CALLENGINE_SHARED"]))
    for cand in cands:
        if (cand / "esl" / "captures").is_dir():
            return cand
    return None


def _load(name: str) -> bytes:
    shared = _shared()
    if shared is None:
        return b""
    return (shared / "esl" / "captures" / name).read_bytes().split(b"\n", 1)[1]


def _synthetic() -> bytes:
    return (c.auth_request() + c.command_reply("+OK accepted")
            + c.serialize_event_plain([("Event-Name", "CHANNEL_ANSWER"), ("Unique-ID", "u")])
            + c.serialize_event_json([("Event-Name", "BACKGROUND_JOB")], "+OK u\n")
            + c.serialize_event_xml([("Event-Name", "API")], "+OK\n")
            + c.api_response("+OK\n") + c.disconnect_notice())


# Small but varied real streams: every frame type incl. connect reply, linger, log/data, json, xml
STREAMS = [s for s in (
    _load("fs-1.10.12/01c_inbound_commands_and_errors.txt"),
    _load("fs-1.10.12/06c_outbound_socket_sip_linger_timeout.txt")[:40000],
    _load("fs-1.10.12/05_json_format_call.txt")[:30000],
    _load("fs-1.10.12/05_xml_format_call.txt")[:30000],
    _load("zhifeichen_esl__message_test.go.txt"),
    _load("danbarua_NEventSocket__Example4.txt")[:40000],
) if s] or [_synthetic()]


def feed(chunks: list[bytes], eof: bool = True) -> list[c.Frame]:
    p = EslParser()
    out: list[c.Frame] = []
    for ch in chunks:
        p.receive_data(ch)
        out.extend(p)
    if eof:
        p.receive_data(b"")
        out.extend(p)
    return out


def touch(frames: list[c.Frame]) -> None:
    """Read everything a consumer could read, so lazy parsing errors surface here."""
    for f in frames:
        _ = (f.content_type, f.reply_text, f.ok, f.name, f.subclass)
        if f.event is not None:
            _ = (f.event.headers, f.event.raw_headers, f.event.body, f.event.get("Unique-ID"))


def _prefix_frames(stream: bytes) -> list[c.Frame]:
    # the truncated streams end mid-frame: compare only complete frames (no EOF)
    return feed([stream], eof=False)


WHOLE = [_prefix_frames(s) for s in STREAMS]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(idx=st.integers(0, len(STREAMS) - 1), cuts=st.lists(st.integers(0, 10**6), max_size=40),
       data=st.data())
def test_any_split_parses_to_the_same_frames(idx: int, cuts: list[int], data) -> None:
    stream = STREAMS[idx]
    points = sorted({x % (len(stream) + 1) for x in cuts})
    # sometimes add a run of tiny chunks around a random spot (1-3 byte segments)
    if data.draw(st.booleans()):
        at = data.draw(st.integers(0, len(stream)))
        points = sorted(set(points) | set(range(at, min(at + 60, len(stream)), 2)))
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert b"".join(chunks) == stream
    got = feed([ch for ch in chunks if ch], eof=False)
    assert got == WHOLE[idx]
    touch(got)


# --------------------------------------------------------------------- encode -> parse

_NO_PRESERVED_ESCAPE = re.compile(r"%[0-9A-F]{2}")
header_name = st.from_regex(r"\A[A-Za-z][A-Za-z0-9_-]{0,30}\Z")
value = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                max_size=40).filter(lambda v: not _NO_PRESERVED_ESCAPE.search(v))


@settings(max_examples=200, deadline=None)
@given(headers=st.dictionaries(header_name, value, min_size=1, max_size=12),
       body=st.one_of(st.none(), st.text(st.characters(blacklist_categories=("Cs",),
                                                       blacklist_characters="\x00\r"),
                                         min_size=1, max_size=60)),
       fmt=st.sampled_from(["plain", "json", "xml"]))
def test_server_serializers_round_trip(headers: dict[str, str], body: str | None, fmt: str) -> None:
    headers = {k: v for k, v in headers.items() if k not in ("Content-Length", "Content-Type")}
    headers["Event-Name"] = headers.get("Event-Name") or "CUSTOM"
    ser = {"plain": c.serialize_event_plain, "json": c.serialize_event_json,
           "xml": c.serialize_event_xml}[fmt]
    if fmt == "xml" and body is not None:
        # XML cannot carry C0 controls; FS bodies in XML are api output (text)
        body = "".join(ch for ch in body if ch >= " " or ch == "\n") or None
    (f,) = feed([ser(list(headers.items()), body)])
    got = dict(f.event.headers)
    got.pop("Content-Length", None)
    # switch_event_serialize writes an empty value as _undef_ (plain only)
    want = {k: (v if v or fmt != "plain" else "_undef_") for k, v in headers.items()}
    assert got == want
    if body is not None and fmt == "xml":
        # the pretty printer's indentation is trimmed only when it is pure excess whitespace
        assert f.event.body.rstrip() == body.rstrip()
    else:
        assert f.event.body == (body or "")


@settings(max_examples=150, deadline=None)
@given(cmd=st.from_regex(r"\A[a-z_]{1,12}( [!-~]{1,20}){0,3}\Z"),
       headers=st.dictionaries(header_name, st.from_regex(r"\A[ -~]{0,30}\Z").map(str.strip),
                               max_size=6),
       body=st.one_of(st.none(), st.binary(max_size=50)))
def test_client_commands_round_trip_through_command_parser(cmd, headers, body) -> None:
    headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
    wire = c._cmd(cmd, list(headers.items()), body)
    p = c.CommandParser()
    for i in range(0, len(wire), 7):
        p.receive_data(wire[i:i + 7])
    got = p.next_command()
    assert got is not None and got.line == cmd and got.body == (body or b"")
    for k, v in headers.items():
        assert got.header(k) == v
    assert p.next_command() is None


# --------------------------------------------------------------------- fuzz

def _only_protocol_errors(data: bytes, chunk: int = 0, eager: bool = False) -> None:
    p = EslParser(max_header_bytes=4096, max_body_bytes=1 << 20, eager_events=eager)
    try:
        if chunk:
            for i in range(0, len(data), chunk):
                p.receive_data(data[i:i + chunk])
                touch(list(p))
        else:
            p.receive_data(data)
        p.receive_data(b"")
        touch(list(p))
    except RemoteProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600), chunk=st.integers(0, 17), eager=st.booleans())
def test_random_bytes_only_raise_remote_protocol_error(data: bytes, chunk: int, eager) -> None:
    _only_protocol_errors(data, chunk, eager)


@settings(max_examples=300, deadline=None)
@given(data=st.lists(st.sampled_from([
    b"Content-Type: ", b"Content-Length: ", b"text/event-plain", b"text/event-json",
    b"text/event-xml", b"command/reply", b"\n", b"\n\n", b": ", b"\r", b"12", b"0", b"-1",
    b"Event-Name: X", b"<event>", b"<headers>", b"</headers>", b"<body>", b"{", b'"_body":',
    b"%", b"%ZZ", b"%C3", b"\xff", b"Reply-Text: %2BOK%0A", b"Event-Name: CHANNEL_DATA"]),
    max_size=60).map(b"".join), eager=st.booleans())
def test_protocol_shaped_garbage_only_raises_remote_protocol_error(data: bytes, eager) -> None:
    _only_protocol_errors(data, 0, eager)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(idx=st.integers(0, len(STREAMS) - 1), data=st.data(), eager=st.booleans())
def test_mutated_captures_only_raise_remote_protocol_error(idx: int, data, eager: bool) -> None:
    stream = bytearray(STREAMS[idx][:8000])
    for _ in range(data.draw(st.integers(1, 6))):
        kind = data.draw(st.sampled_from(["flip", "insert", "delete", "length"]))
        pos = data.draw(st.integers(0, max(len(stream) - 1, 0)))
        if kind == "flip" and stream:
            stream[pos] ^= data.draw(st.integers(1, 255))
        elif kind == "insert":
            stream[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del stream[pos:pos + data.draw(st.integers(1, 8))]
        else:
            m = list(re.finditer(rb"Content-Length: (\d+)", stream))
            if m:
                hit = m[data.draw(st.integers(0, len(m) - 1))]
                new = data.draw(st.sampled_from([b"0", b"1", b"99999999", b"x", b"-5", b""]
                                                + [str(int(hit.group(1)) + d).encode()
                                                   for d in (-3, -1, 1, 2)]))
                stream[hit.start(1):hit.end(1)] = new
    _only_protocol_errors(bytes(stream), data.draw(st.integers(0, 700)), eager)


# --------------------------------------------------------------------- one-pass split == slow split

_block_piece = st.sampled_from([
    b"Event-Name", b"Unique-ID", b": ", b"\n", b"value", b"%20", b"%3A", b"%C3%A9", b"%E2%82",
    b"%", b"%Z", b"%0a", b"%00", b'"', b"\\", b"\t", b"\xc3\xa9", b"\xff", b"a%41b", b":", b" ",
    b"%41-Name", b"", b"Event-Name: X\n", b"\\u0041"])


def _slow_decoded(head: bytes) -> dict | Exception:
    try:
        return c._decode_all(c._split_header_text(head.decode("utf-8", "replace"), "t"))
    except RemoteProtocolError as exc:
        return exc


@settings(max_examples=600, deadline=None)
@given(head=st.one_of(st.lists(_block_piece, max_size=30).map(b"".join),
                      st.binary(max_size=80)))
def test_one_pass_split_agrees_with_line_by_line_split(head: bytes) -> None:
    """``_split_decode`` (JSON trick) must give exactly what the slow path gives, or step aside
    (None); it must never accept a block the slow path rejects."""
    head = head.replace(b"\r", b"").strip(b"\n")
    if not head:
        return
    slow = _slow_decoded(head)
    fast = c._split_decode(head)
    if fast is not None:
        assert not isinstance(slow, Exception), (head, fast)
        assert fast == slow
    raw = c._split_decode(head, decode=False)
    if raw is not None:
        assert raw == c._split_header_text(head.decode("utf-8", "replace"), "t")


def test_one_pass_split_is_taken_for_freeswitch_events() -> None:
    """The fast path must actually serve real FreeSWITCH events (else the bench figure lies)."""
    frames = [f for s in STREAMS for f in _prefix_frames(s)
              if isinstance(f.event, c._PlainEvent)]
    assert frames
    heads = [f.event._head.strip(b"\n") for f in frames if b"\r" not in f.event._head]
    fast = [h for h in heads if c._split_decode(h) is not None]
    assert len(fast) >= 0.9 * len(heads)
    for h in fast[:200]:
        assert c._split_decode(h) == _slow_decoded(h)
