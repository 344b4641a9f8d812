"""Sans-IO codec for the FreeSWITCH Event Socket (ESL) wire protocol.

Rules
-----
* No I/O, no trio, no threads: bytes in, frames out (h11 style). The caller owns the socket.
* Every malformed or hostile input raises exactly one exception type, :class:`RemoteProtocolError`
  (a ``ValueError``), with a message naming the frame and what was wrong. Nothing else may escape
  the parsers for any input. Once a parser has raised, it stays broken and re-raises the same error
  (the stream position is unknown, so resynchronising would silently lose or invent frames).
* Limits are enforced before buffering unbounded data: a header block larger than
  ``max_header_bytes`` or a ``Content-Length`` above ``max_body_bytes`` is an error.
* Client command encoders refuse CR/LF inside arguments (``ValueError``) so that a value cannot
  smuggle extra headers or a second command into the stream (header injection).
* Where the real FreeSWITCH 1.10.12 recordings and the written notes disagree, the recordings win.

Theory of operation
-------------------
FreeSWITCH frames are "header block, blank line, optional body of exactly Content-Length bytes"
(PROTOCOL.md §1). :class:`EslParser` keeps one ``bytes`` buffer and a read offset. ``next_frame``
looks for the end of the header block with ``bytes.find`` (the CR-tolerant search only runs once a
CR byte has ever been seen), parses the handful of outer headers line by line, then waits until the
body is complete. Event frames (``text/event-plain|json|xml``) get their payload parsed into an
:class:`EslEvent` immediately, so that corrupt JSON/XML fails at ``next_frame`` and not later in
some consumer. The plain-format inner header block (dozens of headers per event, the hot path) is
split with ONE compiled regex per block (not per header) into a dict of still URL-encoded values;
URL-decoding happens lazily the first time ``EslEvent.headers`` is read, because most consumers
only look at a few headers (``name``/``subclass``/``get`` decode just what they touch).

The outbound ``connect`` reply is special: it is a whole serialized CHANNEL_DATA event *in the
outer header block*, with no Content-Length and ``Content-Type: command/reply`` among its LAST
headers. Content-Type is therefore looked up anywhere in the block, and such a reply gets an
``event`` built from its (URL-encoded) headers.

The second half of the module is the FreeSWITCH side, used by the emulator in ``sim/freeswitch``:
frame serializers that reproduce FreeSWITCH's byte layout (header order per frame type, URL
encoding as ``switch_url_encode_opt``), and :class:`CommandParser`, which reads client commands the
way ``read_packet`` in mod_event_socket.c does.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Mapping, Sequence
from urllib.parse import unquote
from xml.sax.saxutils import escape as _xml_escape

import msgspec

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_HEADER_BYTES",
    "DISCONNECT_NOTICE_BODY",
    "RUDE_REJECTION_BODY",
    "Command",
    "CommandParser",
    "EslEvent",
    "EslParser",
    "Frame",
    "HeaderValue",
    "RemoteProtocolError",
    "api",
    "api_response",
    "auth",
    "auth_request",
    "bgapi",
    "command_reply",
    "connect",
    "connect_reply",
    "disconnect_notice",
    "divert_events",
    "event",
    "exit",
    "filter",
    "filter_delete",
    "getvar",
    "linger",
    "linger_notice",
    "log",
    "log_data",
    "myevents",
    "nixevent",
    "noevents",
    "nolinger",
    "nolog",
    "parse_event_payload",
    "resume",
    "rude_rejection",
    "sendevent",
    "sendmsg",
    "serialize_event_json",
    "serialize_event_plain",
    "serialize_event_plain_payload",
    "serialize_event_xml",
    "url_decode",
    "url_encode",
]

DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024

DISCONNECT_NOTICE_BODY = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
RUDE_REJECTION_BODY = b"Access Denied, go away.\n"

EVENT_CONTENT_TYPES = {
    "text/event-plain": "plain",
    "text/event-json": "json",
    "text/event-xml": "xml",
}

HeaderValue = str | list
HeaderInput = Mapping[str, object] | Iterable[tuple[str, object]]


class RemoteProtocolError(ValueError):
    """The peer sent bytes that are not valid ESL (or exceed our limits)."""


# ---------------------------------------------------------------------------------------------
# URL encoding exactly as switch_url_encode_opt / switch_url_decode
# ---------------------------------------------------------------------------------------------

# Bytes that FreeSWITCH leaves alone: letters, digits and ! $ ' ( ) * , - . / _ ~ (PROTOCOL.md §2).
# Everything < 0x20, > 0x7E or in  "\r\n #%&+:;<=>?@[\]^`{|}  is encoded, except that a '%' already
# followed by two UPPERCASE hex digits is kept (FS never double-encodes).
_ENCODE_RE = re.compile(rb"%(?![0-9A-F]{2})|[^A-Za-z0-9!$'()*,\-./_~%]")
_HEX_TABLE = [b"%%%02X" % i for i in range(256)]


def _encode_match(m: re.Match[bytes]) -> bytes:
    return _HEX_TABLE[m.group()[0]]


def url_encode(value: str | bytes) -> str:
    """URL-encode one header value the way FreeSWITCH does (uppercase %XX, no double encoding)."""
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return _ENCODE_RE.sub(_encode_match, raw).decode("ascii")


def url_decode(value: str) -> str:
    """Decode %XX escapes (as switch_url_decode; '+' is NOT a space). Invalid UTF-8 -> U+FFFD."""
    if "%" not in value:
        return value
    return unquote(value, errors="replace")


def _decode_value(value: object) -> object:
    if isinstance(value, str):
        return url_decode(value) if "%" in value else value
    return value


# ---------------------------------------------------------------------------------------------
# Parsed objects
# ---------------------------------------------------------------------------------------------


class EslEvent:
    """One FreeSWITCH event (from a text/event-* frame or an outbound connect reply).

    ``headers`` are URL-decoded for plain/xml (decoded lazily, then cached) and as given for json
    (arrays stay lists). ``body`` is the inner body (e.g. BACKGROUND_JOB output): ``str`` when it is
    valid UTF-8 (always for json/xml), else ``bytes``; ``""`` when there is none.
    """

    __slots__ = ("_decoded", "_raw", "body", "format")

    def __init__(self, raw_headers: dict, body: str | bytes = "", fmt: str = "plain",
                 decoded: bool = False) -> None:
        self._raw = raw_headers
        self._decoded = raw_headers if decoded else None
        self.body = body
        self.format = fmt

    @property
    def headers(self) -> dict:
        d = self._decoded
        if d is None:
            d = {k: (unquote(v, errors="replace") if "%" in v else v) if isinstance(v, str) else v
                 for k, v in self._raw.items()}
            self._decoded = d
        return d

    @property
    def raw_headers(self) -> dict:
        """Header values exactly as on the wire (URL-encoded for plain/xml)."""
        return self._raw

    def get(self, name: str, default: object = None) -> object:
        """Decoded value of one header without decoding all of them."""
        if self._decoded is not None:
            return self._decoded.get(name, default)
        if name not in self._raw:
            return default
        return _decode_value(self._raw[name])

    @property
    def name(self) -> str | None:
        v = self.get("Event-Name")
        return v if isinstance(v, str) else None

    @property
    def subclass(self) -> str | None:
        v = self.get("Event-Subclass")
        return v if isinstance(v, str) else None

    @property
    def unique_id(self) -> str | None:
        v = self.get("Unique-ID")
        return v if isinstance(v, str) else None

    def __repr__(self) -> str:
        return f"EslEvent(name={self.name!r}, subclass={self.subclass!r}, format={self.format!r})"


class Frame:
    """One ESL frame: outer ``headers`` (raw, not URL-decoded), ``body`` bytes, optional ``event``."""

    __slots__ = ("body", "event", "headers")

    def __init__(self, headers: dict[str, str], body: bytes = b"",
                 event: EslEvent | None = None) -> None:
        self.headers = headers
        self.body = body
        self.event = event

    @property
    def content_type(self) -> str | None:
        return self.headers.get("Content-Type")

    @property
    def reply_text(self) -> str | None:
        """Reply-Text of a command/reply; URL-decoded for the outbound connect reply (%2BOK%0A)."""
        v = self.headers.get("Reply-Text")
        if v is not None and self.event is not None:
            return url_decode(v)
        return v

    @property
    def ok(self) -> bool:
        """True for a command/reply whose Reply-Text starts with +OK, or an api body starting +OK."""
        if self.content_type == "api/response":
            return self.body.startswith(b"+OK")
        return (self.reply_text or "").startswith("+OK")

    @property
    def name(self) -> str | None:
        return self.event.name if self.event is not None else None

    @property
    def subclass(self) -> str | None:
        return self.event.subclass if self.event is not None else None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return (self.headers == other.headers and self.body == other.body
                and (self.event.headers if self.event else None)
                == (other.event.headers if other.event else None)
                and (self.event.body if self.event else None)
                == (other.event.body if other.event else None))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        extra = f", event={self.event!r}" if self.event is not None else ""
        return f"Frame(content_type={self.content_type!r}, body={len(self.body)}B{extra})"


# ---------------------------------------------------------------------------------------------
# Event payload parsing (plain / json / xml)
# ---------------------------------------------------------------------------------------------

_JSON_DECODER = msgspec.json.Decoder()


def _is_digits(v: str) -> bool:
    # str.isdigit() accepts non-ASCII digits and int() accepts '1_0' and spaces: be strict.
    return 0 < len(v) <= 12 and v.isascii() and v.isdigit()


def _split_header_text(text: str, what: str) -> dict[str, str]:
    """Split an inner header block into a dict. For a duplicated name the FIRST value wins, as
    in switch_event_get_header (greenswitch keeps the last one)."""
    if "\r" in text:
        text = text.replace("\r", "")
    text = text.strip("\n")
    if not text:
        return {}
    lines = text.count("\n") + 1
    # Fast path, all C-level: FS URL-encodes ':' and ' ' inside values, so each line holds exactly
    # one ': ' and one split yields name,value,name,value... "count == lines" plus "no line has
    # two" proves every line has exactly one separator.
    if text.count(": ") == lines and _TWO_SEPS.search(text) is None \
            and not text.startswith(": ") and "\n: " not in text:
        parts = text.replace("\n", ": ").split(": ")
        d = dict(zip(parts[::2], parts[1::2], strict=True))
        if len(d) == lines:
            return d
        # duplicated names (Content-Length twice in a sendevent echo): slow path, first wins
    out: dict[str, str] = {}
    for line in text.split("\n"):
        name, sep, value = line.partition(": ")
        if not sep or not name:
            raise RemoteProtocolError(f"{what}: header line without ': ': {line[:80]!r}")
        if name not in out:
            out[name] = value
    return out


_TWO_SEPS = re.compile(r": [^\n]*: ")


def _decode_all(raw: dict[str, str]) -> dict[str, str]:
    """URL-decode every value (and the rare name containing '%'), one ``unquote`` per value that
    needs it. The slow path: :func:`_split_decode` does the common case in C."""
    out = {}
    for k, v in raw.items():
        if "%" in k:
            k = unquote(k, errors="replace")
        if k not in out:
            out[k] = unquote(v, errors="replace") if "%" in v else v
    return out


_JSON_HEADERS = msgspec.json.Decoder(dict[str, str])
_HIGH_ESCAPE = re.compile(rb"%[89A-Fa-f]")


def _split_decode(head: bytes, decode: bool = True) -> dict[str, str] | None:
    """Split AND URL-decode a plain inner header block in one pass of C code, or None.

    FreeSWITCH URL-encodes every value (no raw '"', '\\', ':', ' ', CR/LF or control bytes), so
    ``Name: value\n...`` becomes a JSON object by three ``bytes.replace`` calls: ': ' -> '":"',
    newline -> '","', and '%' -> '\\u00' (so that %XX turns into the code point U+00XX, which
    msgspec's decoder then produces). Escapes of bytes >= 0x80 are the UTF-8 bytes of one
    character: values holding them are re-read as latin-1 -> UTF-8 (exactly what ``unquote``
    does). Whenever the block is not of that strict shape (a quote or backslash anywhere, a line
    without exactly one ': ', duplicated or empty names, a '%' not followed by two hex digits,
    control bytes, invalid UTF-8, raw non-ASCII together with high escapes), the JSON is invalid
    or the checks below fail and the caller takes the line-by-line slow path, which decides
    validity and error messages. Names are decoded too (FreeSWITCH never encodes names, and the
    slow path does the same), so both paths agree on every input. ``decode=False`` skips the
    '%' step: values stay as on the wire (``raw_headers``).
    """
    if b'"' in head or b"\\" in head:
        return None
    js = head.replace(b": ", b'":"').replace(b"\n", b'","')
    if decode:
        js = js.replace(b"%", b"\\u00")
    try:
        d = _JSON_HEADERS.decode(b'{"' + js + b'"}')
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    if len(d) != head.count(b"\n") + 1 or "" in d:
        return None  # duplicated names (first must win), or an empty name (an error)
    if decode and _HIGH_ESCAPE.search(head) is not None:
        if not head.isascii():
            return None
        for k, v in d.items():
            if not v.isascii():
                d[k] = v.encode("latin-1").decode("utf-8", "replace")
        if not all(k.isascii() for k in d):
            return None
    return d


class _PlainEvent(EslEvent):
    """text/event-plain: the inner header block is split into a dict on first use.

    Splitting ~80 headers costs more than framing the whole event, and most consumers read only
    Event-Name, Unique-ID and a few more, which :meth:`get` finds with ``bytes.rfind`` instead.
    A malformed inner header line therefore raises :class:`RemoteProtocolError` when the headers
    are first read (``EslParser(eager_events=True)`` moves that check into ``next_frame``).
    """

    __slots__ = ("_head", "_name", "_what")

    def __init__(self, head: bytes, body: str | bytes, what: str) -> None:
        self._name = None
        self._raw = None
        self._decoded = None
        self._head = head
        self._what = what
        self.body = body
        self.format = "plain"

    @property
    def raw_headers(self) -> dict:
        raw = self._raw
        if raw is None:
            head = self._head
            if b"\r" not in head:
                head = head.strip(b"\n")
                raw = _split_decode(head, decode=False) if head else {}
            if raw is None:
                raw = _split_header_text(head.decode("utf-8", "replace"), self._what)
            self._raw = raw
        return raw

    @property
    def headers(self) -> dict:
        d = self._decoded
        if d is None:
            head = self._head
            if b"\r" not in head:
                head = head.strip(b"\n")
                d = _split_decode(head) if head else {}
            if d is None:
                d = _decode_all(self.raw_headers)
            self._decoded = d
        return d

    @property
    def name(self) -> str | None:
        v = self._name
        if v is None:
            v = self._name = self.get("Event-Name")
        return v if isinstance(v, str) else None

    def get(self, name: str, default: object = None) -> object:
        if self._decoded is not None:
            return self._decoded.get(name, default)
        if self._raw is not None:
            v = self._raw.get(name)
            return default if v is None else url_decode(v)
        head = self._head
        keys = _GET_KEYS.get(name)
        if keys is None:
            keys = _get_keys(name)
        key, line_key = keys
        # first occurrence wins, like switch_event_get_header (and our dict)
        if head.startswith(key):
            pos = 0
        else:
            pos = head.find(line_key)
            if pos < 0:
                return default
            pos += 1
        start = pos + len(key)
        end = head.find(b"\n", start)
        v = head[start:] if end < 0 else head[start:end]
        return url_decode(v.decode("utf-8", "replace").rstrip("\r"))


#: header name -> (b"Name: ", b"\nName: "): the engine asks for the same dozen names on every
#: event, and encoding + concatenating them was a fifth of ``get`` (bounded: names are code's)
_GET_KEYS: dict[str, tuple[bytes, bytes]] = {}


def _get_keys(name: str) -> tuple[bytes, bytes]:
    key = name.encode("utf-8", "replace") + b": "
    keys = (key, b"\n" + key)
    if len(_GET_KEYS) < 4096:
        _GET_KEYS[name] = keys
    return keys


_BLANK_LINE = re.compile(rb"\n\n")


def _parse_plain(payload: bytes, what: str) -> EslEvent:
    # re.search beats bytes.find here: find's two-byte search stalls on every '\n' (one per
    # header line), the regex engine does not (measured 2.2 vs 3.4 us on a 3.6 KB event)
    m = _BLANK_LINE.search(payload)
    end = m.start() if m is not None else -1
    if end < 0:
        head, rest = payload, b""
    else:
        head, rest = payload[:end], payload[end + 2:]
    body: str | bytes = ""
    # The inner Content-Length, when there is a body, is the LAST header of the block: FS appends
    # it right before the blank line (switch_event_serialize). Looking only at the last line avoids
    # a second scan of the block; an earlier Content-Length (a sendevent client's own) is ignored.
    last = head.rfind(b"\n") + 1
    if head.startswith(b"Content-Length: ", last):
        cl = head[last + 16:].rstrip(b"\r")
        if not (0 < len(cl) <= 12 and cl.isdigit()):
            raise RemoteProtocolError(f"{what}: non-numeric inner Content-Length {cl[:40]!r}")
        n = int(cl)
        if n > len(rest):
            raise RemoteProtocolError(
                f"{what}: inner Content-Length {n} but only {len(rest)} body bytes")
        data = rest[:n]
        try:
            body = data.decode("utf-8")
        except UnicodeDecodeError:
            body = data
    return _PlainEvent(head, body, what)


def _parse_json(payload: bytes, what: str) -> EslEvent:
    try:
        obj = _JSON_DECODER.decode(payload)
    except (msgspec.DecodeError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RemoteProtocolError(f"{what}: undecodable JSON event: {exc}") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError(f"{what}: JSON event is a {type(obj).__name__}, not an object")
    body = obj.pop("_body", "")
    if not isinstance(body, str):
        raise RemoteProtocolError(f"{what}: JSON event _body is not a string")
    return EslEvent(obj, body, "json", decoded=True)


# FreeSWITCH's own XML layout (switch_event_xmlize + pretty printer) with no entities and no
# attributes. A document matching this is well-formed XML by construction, so it is read with two
# regex passes (~4x faster than ElementTree); anything else goes through ElementTree, which
# decides validity and handles entities, CDATA, attributes...
_XML_FAST = re.compile(
    rb"\s*<event>\s*<headers>\s*((?:<([A-Za-z_][A-Za-z0-9_.:-]*)>[^<&]*</\2>\s*)*)</headers>\s*"
    rb"(?:<Content-Length>([0-9]{1,12})</Content-Length>\s*<body>([^<&]*)</body>\s*)?</event>\s*")
_XML_HDR = re.compile(r"<([^>]+)>([^<]*)</")


def _parse_xml(payload: bytes, what: str) -> EslEvent:
    m = _XML_FAST.fullmatch(payload)
    if m is not None:
        try:
            text = m.group(1).decode("utf-8")
            body = (m.group(4) or b"").decode("utf-8")
        except UnicodeDecodeError:
            m = None
    if m is not None:
        raw: dict = {}
        for k, v in _XML_HDR.findall(text):
            prev = raw.get(k)
            if prev is None:
                raw[k] = v
            elif isinstance(prev, list):
                prev.append(v)
            else:
                raw[k] = [prev, v]
        if m.group(3) is not None:
            cl = m.group(3).decode("ascii")
            raw["Content-Length"] = cl
            n = int(cl)
            enc = body.encode("utf-8")
            if len(enc) > n and not enc[n:].strip():
                body = enc[:n].decode("utf-8", "replace")
        return _XmlEvent(raw, body, "xml")
    return _parse_xml_slow(payload, what)


def _parse_xml_slow(payload: bytes, what: str) -> EslEvent:
    try:
        root = ET.fromstring(payload)
    except Exception as exc:  # noqa: BLE001 - expat raises several types; all mean "bad XML"
        raise RemoteProtocolError(f"{what}: undecodable XML event: {exc}") from None
    if root.tag != "event":
        raise RemoteProtocolError(f"{what}: XML root is <{root.tag}>, not <event>")
    raw: dict = {}
    hdrs = root.find("headers")
    if hdrs is not None:
        for el in hdrs:
            val = el.text or ""
            prev = raw.get(el.tag)
            if prev is None:
                raw[el.tag] = val
            elif isinstance(prev, list):
                prev.append(val)
            else:
                raw[el.tag] = [prev, val]
    body = ""
    b = root.find("body")
    if b is not None:
        body = b.text or ""
        cl_el = root.find("Content-Length")
        cl = (cl_el.text or "").strip() if cl_el is not None else ""
        if cl_el is not None:
            raw["Content-Length"] = cl
        # FS's XML pretty-printer indents INSIDE <body> ("+OK <uuid>\n  " while the element says
        # 41): drop that trailing whitespace when it is the only excess, so every format agrees.
        if _is_digits(cl):
            n = int(cl)
            enc = body.encode("utf-8")
            if len(enc) > n and not enc[n:].strip():
                body = enc[:n].decode("utf-8", "replace")
    # XML values are URL-encoded like plain ones; lists are decoded element by element.
    return _XmlEvent(raw, body, "xml")


class _XmlEvent(EslEvent):
    __slots__ = ()

    @property
    def headers(self) -> dict:
        d = self._decoded
        if d is None:
            d = {k: ([url_decode(x) for x in v] if isinstance(v, list) else url_decode(v))
                 for k, v in self._raw.items()}
            self._decoded = d
        return d

    def get(self, name: str, default: object = None) -> object:
        if self._decoded is not None:
            return self._decoded.get(name, default)
        v = self._raw.get(name)
        if v is None:
            return default
        return [url_decode(x) for x in v] if isinstance(v, list) else url_decode(v)


_PAYLOAD_PARSERS = {"plain": _parse_plain, "json": _parse_json, "xml": _parse_xml}


def parse_event_payload(payload: bytes, fmt: str = "plain", what: str = "event") -> EslEvent:
    """Parse the body of a text/event-<fmt> frame (also usable on body-only captures)."""
    try:
        parser = _PAYLOAD_PARSERS[fmt]
    except KeyError:
        raise ValueError(f"unknown event format {fmt!r}") from None
    return parser(payload, what)


# ---------------------------------------------------------------------------------------------
# Client-side stream parser
# ---------------------------------------------------------------------------------------------


class EslParser:
    """Incremental parser of the FreeSWITCH -> client byte stream.

    ``receive_data(b"")`` signals EOF. ``next_frame()`` returns a :class:`Frame` or ``None`` when
    more data is needed (or the stream ended cleanly; see :attr:`closed`). Iterating the parser
    yields every complete frame currently buffered.
    """

    def __init__(self, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, eager_events: bool = False) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.eager_events = eager_events
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._cr = False
        self._error: RemoteProtocolError | None = None
        self._frames = 0
        # pending frame: headers parsed, waiting for the body
        self._pending: tuple[dict[str, str], int] | None = None

    # -- input ---------------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        if self._eof and data:
            raise RuntimeError("receive_data() after EOF")  # caller bug, not peer input
        if not data:
            self._eof = True
            return
        if not self._cr and b"\r" in data:
            self._cr = True
        if self._pos:
            self._buf = self._buf[self._pos:] + bytes(data)
            self._pos = 0
        elif self._buf:
            self._buf += bytes(data)
        else:
            self._buf = bytes(data)

    @property
    def closed(self) -> bool:
        """EOF was received and every complete frame has been returned."""
        return self._eof and self._pos >= len(self._buf) and self._pending is None

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def __iter__(self) -> Iterator[Frame]:
        while True:
            f = self.next_frame()
            if f is None:
                return
            yield f

    # -- output --------------------------------------------------------------------------------
    def _fail(self, msg: str) -> RemoteProtocolError:
        self._error = RemoteProtocolError(f"frame #{self._frames}: {msg}")
        return self._error

    def next_frame(self) -> Frame | None:
        if self._error is not None:
            raise self._error
        buf = self._buf
        pos = self._pos
        n = len(buf)
        pending = self._pending
        if pending is None:
            # skip blank lines between frames (FS never sends them; old captures and CRLF peers do)
            while pos < n and buf[pos] in (10, 13):
                pos += 1
            self._pos = pos
            if pos >= n:
                return None
            end = buf.find(b"\n\n", pos)
            if self._cr:
                end2 = buf.find(b"\n\r\n", pos)
                if end2 >= 0 and (end < 0 or end2 < end):
                    end, sep = end2, 3
                else:
                    sep = 2
            else:
                sep = 2
            if end < 0:
                if n - pos > self.max_header_bytes:
                    raise self._fail(f"header block exceeds {self.max_header_bytes} bytes")
                if self._eof:
                    raise self._fail(f"connection closed inside a header block ({n - pos} bytes)")
                return None
            if end - pos > self.max_header_bytes:
                raise self._fail(f"header block exceeds {self.max_header_bytes} bytes")
            headers = self._parse_outer(buf[pos:end])
            cl = headers.get("Content-Length")
            length = 0
            if cl is not None:
                if not (0 < len(cl) <= 12 and cl.isascii() and cl.isdigit()):
                    raise self._fail(f"non-numeric Content-Length {cl[:40]!r} "
                                     f"({headers.get('Content-Type')})")
                length = int(cl)
                if length > self.max_body_bytes:
                    raise self._fail(f"Content-Length {length} exceeds {self.max_body_bytes}")
            pos = end + sep
            self._pos = pos
            pending = (headers, length)
        headers, length = pending
        if n - pos < length:
            self._pending = pending
            if self._eof:
                raise self._fail(f"connection closed inside a body ({n - pos} of {length} "
                                 f"bytes, {headers.get('Content-Type')})")
            return None
        self._pending = None
        body = buf[pos:pos + length] if length else b""
        self._pos = pos + length
        frame = Frame(headers, body, None)
        ct = headers.get("Content-Type")
        fmt = EVENT_CONTENT_TYPES.get(ct) if ct else None
        if fmt is not None:
            try:
                ev = _PAYLOAD_PARSERS[fmt](body, f"frame #{self._frames} ({ct})")
                if self.eager_events:
                    ev.headers  # noqa: B018 - forces the split and its validation now
            except RemoteProtocolError as exc:
                self._error = exc
                raise
            frame.event = ev
        elif ct == "command/reply" and "Event-Name" in headers:
            # outbound connect reply: a CHANNEL_DATA event serialized into the outer block
            frame.event = EslEvent(headers, "", "plain")
        self._frames += 1
        return frame

    def _parse_outer(self, block: bytes) -> dict[str, str]:
        text = block.decode("utf-8", "replace")
        lines = text.split("\n")
        if len(lines) == 2:
            # hot path: every event frame is exactly 'Content-Length: N' + 'Content-Type: ...'
            a, sa, va = lines[0].partition(": ")
            b, sb, vb = lines[1].partition(": ")
            if sa and sb and a and b and a != b and not va.endswith("\r") \
                    and not vb.endswith("\r") and "Content-Type" in (a, b):
                return {a: va, b: vb}
        headers: dict[str, str] = {}
        for line in lines:
            if line.endswith("\r"):
                line = line[:-1]
            name, sep, value = line.partition(": ")
            if not sep or not name:
                raise self._fail(f"header line without ': ': {line[:80]!r}")
            headers[name] = value
        if "Content-Type" not in headers:
            raise self._fail(f"header block without Content-Type: {text[:80]!r}")
        return headers


# ---------------------------------------------------------------------------------------------
# Client command encoders (client -> FreeSWITCH)
# ---------------------------------------------------------------------------------------------


def _clean(value: object, what: str) -> str:
    s = str(value)
    if "\n" in s or "\r" in s:
        raise ValueError(f"{what} must not contain CR or LF (header injection): {s[:60]!r}")
    return s


def _cmd(line: str, headers: Sequence[tuple[str, object]] = (), body: bytes | None = None) -> bytes:
    out = [_clean(line, "command line")]
    for k, v in headers:
        k = _clean(k, "header name")
        if not k or ":" in k or " " in k:
            raise ValueError(f"invalid header name {k!r}")
        out.append(f"{k}: {_clean(v, f'header {k}')}")
    if body is not None:
        out.append(f"Content-Length: {len(body)}")
        return ("\n".join(out) + "\n\n").encode("utf-8") + body
    return ("\n".join(out) + "\n\n").encode("utf-8")


def _word(value: object, what: str) -> str:
    s = _clean(value, what)
    if not s or any(c.isspace() for c in s):
        raise ValueError(f"{what} must be one non-empty word: {s!r}")
    return s


def auth(password: str) -> bytes:
    return _cmd(f"auth {_clean(password, 'password')}")


_FORMATS = ("plain", "json", "xml")


def event(format: str = "plain", *names: str) -> bytes:
    """``event plain CHANNEL_ANSWER CUSTOM conference::maintenance``; no names means ALL."""
    if format not in _FORMATS:
        raise ValueError(f"event format must be one of {_FORMATS}, not {format!r}")
    words = [_word(n, "event name") for n in names] or ["ALL"]
    return _cmd(f"event {format} {' '.join(words)}")


def nixevent(*names: str) -> bytes:
    if not names:
        raise ValueError("nixevent needs at least one event name")
    return _cmd("nixevent " + " ".join(_word(n, "event name") for n in names))


def noevents() -> bytes:
    return _cmd("noevents")


def filter(header: str, value: str) -> bytes:  # noqa: A001 - ESL command name
    return _cmd(f"filter {_word(header, 'filter header')} {_clean(value, 'filter value')}")


def filter_delete(header: str, value: str | None = None) -> bytes:
    line = f"filter delete {_word(header, 'filter header')}"
    if value is not None:
        line += f" {_clean(value, 'filter value')}"
    return _cmd(line)


def api(cmd: str) -> bytes:
    c = _clean(cmd, "api command")
    if not c.strip():
        raise ValueError("api command must not be empty")
    return _cmd(f"api {c}")


def bgapi(cmd: str, job_uuid: str | None = None) -> bytes:
    c = _clean(cmd, "bgapi command")
    if not c.strip():
        raise ValueError("bgapi command must not be empty")
    hdrs = [("Job-UUID", _word(job_uuid, "Job-UUID"))] if job_uuid else []
    return _cmd(f"bgapi {c}", hdrs)


_CALL_COMMANDS = ("execute", "hangup", "unicast", "nomedia", "xferext")


def sendmsg(uuid: str | None = None, call_command: str = "execute", app: str | None = None,
            arg: str | None = None, body: str | bytes | None = None, loops: int | None = None,
            event_lock: bool = False, event_uuid: str | None = None, async_: bool = False,
            hangup_cause: str | None = None,
            headers: Mapping[str, object] | Iterable[tuple[str, object]] | None = None,
            **extra: object) -> bytes:
    """``sendmsg [<uuid>]`` with call-command execute/hangup/unicast/...

    The app argument goes inline (``execute-app-arg``) or, via ``body``, as a text/plain body
    (needed for multi-line arguments). Extra headers come from ``headers`` and keyword arguments
    (underscores become dashes: ``local_ip='1.2.3.4'`` -> ``local-ip: 1.2.3.4``).
    """
    if call_command not in _CALL_COMMANDS:
        raise ValueError(f"call_command must be one of {_CALL_COMMANDS}, not {call_command!r}")
    line = "sendmsg" if uuid is None else f"sendmsg {_word(uuid, 'uuid')}"
    hdrs: list[tuple[str, object]] = [("call-command", call_command)]
    if call_command == "execute":
        if not app:
            raise ValueError("sendmsg execute needs app=")
        hdrs.append(("execute-app-name", _word(app, "app")))
        if arg is not None and body is not None:
            raise ValueError("give the app argument either inline (arg=) or as body=, not both")
        if arg is not None:
            hdrs.append(("execute-app-arg", arg))
        if loops is not None:
            hdrs.append(("loops", int(loops)))
    elif app is not None or arg is not None:
        raise ValueError(f"app/arg only make sense with call_command='execute', "
                         f"not {call_command!r}")
    if call_command == "hangup" and hangup_cause:
        hdrs.append(("hangup-cause", _word(hangup_cause, "hangup_cause")))
    if event_lock:
        hdrs.append(("event-lock", "true"))
    if event_uuid:
        hdrs.append(("Event-UUID", _word(event_uuid, "event_uuid")))
    if async_:
        hdrs.append(("async", "true"))
    if headers:
        items = headers.items() if isinstance(headers, Mapping) else headers
        hdrs.extend(items)
    hdrs.extend((k.replace("_", "-"), v) for k, v in extra.items())
    if body is not None:
        data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        hdrs.append(("content-type", "text/plain"))
        # _cmd appends Content-Length; FS reads it case-insensitively
        return _cmd(line, hdrs, data)
    return _cmd(line, hdrs)


def myevents(uuid: str | None = None, format: str | None = None) -> bytes:
    line = "myevents"
    if uuid is not None:
        line += f" {_word(uuid, 'uuid')}"
    if format is not None:
        if format not in _FORMATS:
            raise ValueError(f"myevents format must be one of {_FORMATS}, not {format!r}")
        line += f" {format}"
    return _cmd(line)


def linger(seconds: int | None = None) -> bytes:
    if seconds is None:
        return _cmd("linger")
    return _cmd(f"linger {int(seconds)}")


def nolinger() -> bytes:
    return _cmd("nolinger")


def resume() -> bytes:
    return _cmd("resume")


def exit() -> bytes:  # noqa: A001 - ESL command name
    return _cmd("exit")


def connect() -> bytes:
    return _cmd("connect")


_LOG_LEVELS = ("console", "alert", "crit", "err", "warning", "notice", "info", "debug")


def log(level: int | str = 7) -> bytes:
    s = _word(level, "log level")
    if not (s.isdigit() or s.lower() in _LOG_LEVELS):
        raise ValueError(f"log level must be 0-7 or one of {_LOG_LEVELS}, not {s!r}")
    return _cmd(f"log {s}")


def nolog() -> bytes:
    return _cmd("nolog")


def sendevent(name: str, headers: Mapping[str, object] | Iterable[tuple[str, object]] = (),
              body: str | bytes | None = None) -> bytes:
    items = list(headers.items() if isinstance(headers, Mapping) else headers)
    data = None if body is None else (body.encode("utf-8") if isinstance(body, str) else body)
    return _cmd(f"sendevent {_word(name, 'event name')}", items, data)


def getvar(name: str) -> bytes:
    return _cmd(f"getvar {_word(name, 'variable name')}")


def divert_events(on: bool = True) -> bytes:
    return _cmd(f"divert_events {'on' if on else 'off'}")


# ---------------------------------------------------------------------------------------------
# FreeSWITCH-side serializers (used by the emulator)
# ---------------------------------------------------------------------------------------------


def _items(headers: HeaderInput) -> Iterable[tuple[str, object]]:
    return headers.items() if isinstance(headers, Mapping) else headers


def _plain_value(v: object) -> str:
    if isinstance(v, (list, tuple)):
        # switch_event_serialize writes multi-valued headers as ARRAY::a|:b, then url-encodes
        v = "ARRAY::" + "|:".join(str(x) for x in v)
    s = str(v)
    return url_encode(s) if s else "_undef_"


def serialize_event_plain_payload(headers: HeaderInput, body: str | bytes | None = None) -> bytes:
    """The inner block of a text/event-plain frame (switch_event_serialize)."""
    lines = [f"{k}: {_plain_value(v)}\n" for k, v in _items(headers)]
    head = "".join(lines).encode("utf-8")
    if body is None or body == "" or body == b"":
        return head + b"\n"
    data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    return head + b"Content-Length: %d\n\n" % len(data) + data


def _event_frame(ctype: bytes, payload: bytes) -> bytes:
    # events: Content-Length FIRST, then Content-Type (mod_event_socket.c l.1449)
    return b"Content-Length: %d\nContent-Type: %s\n\n" % (len(payload), ctype) + payload


def serialize_event_plain(headers: HeaderInput, body: str | bytes | None = None) -> bytes:
    return _event_frame(b"text/event-plain", serialize_event_plain_payload(headers, body))


def serialize_event_json(headers: HeaderInput, body: str | bytes | None = None) -> bytes:
    obj: dict[str, object] = {}
    for k, v in _items(headers):
        obj[k] = [str(x) for x in v] if isinstance(v, (list, tuple)) else str(v)
    if body is not None and body not in ("", b""):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        obj["Content-Length"] = str(len(text.encode("utf-8")))
        obj["_body"] = text
    return _event_frame(b"text/event-json", msgspec.json.encode(obj))


def serialize_event_xml(headers: HeaderInput, body: str | bytes | None = None) -> bytes:
    """switch_event_xmlize + pretty printer, including its indentation quirk inside <body>."""
    out = ["<event>\n  <headers>\n"]
    for k, v in _items(headers):
        vals = v if isinstance(v, (list, tuple)) else [v]
        for x in vals:
            out.append(f"    <{k}>{_xml_escape(url_encode(str(x)))}</{k}>\n")
    out.append("  </headers>\n")
    if body is not None and body not in ("", b""):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        out.append(f"  <Content-Length>{len(text.encode('utf-8'))}</Content-Length>\n")
        out.append(f"  <body>{_xml_escape(text)}  </body>\n")
    out.append("</event>")
    return _event_frame(b"text/event-xml", "".join(out).encode("utf-8"))


def command_reply(text: str, extra_headers: HeaderInput = ()) -> bytes:
    """``Content-Type: command/reply`` + ``Reply-Text`` (+ raw extra headers, e.g. Job-UUID)."""
    lines = ["Content-Type: command/reply", f"Reply-Text: {_clean(text, 'Reply-Text')}"]
    lines += [f"{k}: {_clean(v, k)}" for k, v in _items(extra_headers)]
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def api_response(body: str | bytes) -> bytes:
    data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    if not data:
        data = b"-ERR no reply\n"  # FS never sends Content-Length: 0 for api
    return b"Content-Type: api/response\nContent-Length: %d\n\n" % len(data) + data


def auth_request() -> bytes:
    return b"Content-Type: auth/request\n\n"


def disconnect_notice(session_uuid: str | None = None) -> bytes:
    """The 67-byte goodbye; session sockets add Controlled-Session-UUID + Content-Disposition."""
    head = b"Content-Type: text/disconnect-notice\n"
    if session_uuid:
        head += (f"Controlled-Session-UUID: {_clean(session_uuid, 'uuid')}\n"
                 "Content-Disposition: disconnect\n").encode()
    return head + b"Content-Length: %d\n\n" % len(DISCONNECT_NOTICE_BODY) + DISCONNECT_NOTICE_BODY


def linger_notice(session_uuid: str, channel_name: str, linger_time: int = -1) -> bytes:
    """Sent when the controlled channel hangs up on a lingering socket (Channel-Name raw)."""
    return ("Content-Type: text/disconnect-notice\n"
            f"Controlled-Session-UUID: {_clean(session_uuid, 'uuid')}\n"
            "Content-Disposition: linger\n"
            f"Channel-Name: {_clean(channel_name, 'Channel-Name')}\n"
            f"Linger-Time: {int(linger_time)}\n"
            "Content-Length: 0\n\n").encode()


def rude_rejection() -> bytes:
    return (b"Content-Type: text/rude-rejection\nContent-Length: %d\n\n" % len(RUDE_REJECTION_BODY)
            + RUDE_REJECTION_BODY)


def log_data(text: str, level: int = 6, channel: int = 3, file: str = "", func: str = "",
             line: int = 0, user_data: str = "") -> bytes:
    data = text.encode("utf-8")
    head = (f"Content-Type: log/data\nContent-Length: {len(data)}\nLog-Level: {level}\n"
            f"Text-Channel: {channel}\nLog-File: {file}\nLog-Func: {func}\nLog-Line: {line}\n"
            f"User-Data: {user_data}\n\n")
    return head.encode("utf-8") + data


def connect_reply(channel_data: HeaderInput, socket_mode: str = "async",
                  control: str = "full") -> bytes:
    """Outbound ``connect`` reply: CHANNEL_DATA headers, then Content-Type etc. LAST, no length."""
    lines = [f"{k}: {_plain_value(v)}\n" for k, v in _items(channel_data)]
    lines.append("Content-Type: command/reply\n")
    lines.append("Reply-Text: %2BOK%0A\n")
    lines.append(f"Socket-Mode: {socket_mode}\n")
    lines.append(f"Control: {control}\n\n")
    return "".join(lines).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# FreeSWITCH-side command parser (read_packet)
# ---------------------------------------------------------------------------------------------


class Command(msgspec.Struct):
    """One client command: ``line`` is the first line, ``name`` its first word, ``args`` the rest."""

    line: str
    headers: dict[str, str]
    body: bytes = b""

    @property
    def name(self) -> str:
        return self.line.split(" ", 1)[0]

    @property
    def args(self) -> str:
        parts = self.line.split(" ", 1)
        return parts[1] if len(parts) > 1 else ""

    def header(self, name: str, default: str | None = None) -> str | None:
        """Case-insensitive header lookup (switch_event_get_header is case-insensitive)."""
        v = self.headers.get(name)
        if v is not None:
            return v
        low = name.lower()
        for k, val in self.headers.items():
            if k.lower() == low:
                return val
        return default


class CommandParser:
    """Incremental parser of the client -> FreeSWITCH stream, as read_packet (PROTOCOL.md §1)."""

    def __init__(self, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self._buf = b""
        self._eof = False
        self._error: RemoteProtocolError | None = None

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._eof = True
            return
        self._buf += bytes(data)

    @property
    def closed(self) -> bool:
        return self._eof and not self._buf.strip(b"\r\n")

    def __iter__(self) -> Iterator[Command]:
        while True:
            c = self.next_command()
            if c is None:
                return
            yield c

    def next_command(self) -> Command | None:
        if self._error is not None:
            raise self._error
        buf = self._buf.lstrip(b"\r\n")
        self._buf = buf
        if not buf:
            return None
        norm = buf.replace(b"\r", b"") if b"\r" in buf else buf
        end = norm.find(b"\n\n")
        if end < 0:
            if len(buf) > self.max_header_bytes:
                self._error = RemoteProtocolError(
                    f"command header block exceeds {self.max_header_bytes} bytes")
                raise self._error
            if self._eof:
                self._error = RemoteProtocolError("connection closed inside a command")
                raise self._error
            return None
        # map the end in the CR-stripped copy back to the raw buffer
        if norm is buf:
            raw_end = end + 2
        else:
            count = 0
            raw_end = 0
            target = end + 2
            for i, ch in enumerate(buf):
                if ch != 13:
                    count += 1
                    if count == target:
                        raw_end = i + 1
                        break
        text = norm[:end].decode("utf-8", "replace")
        lines = text.split("\n")
        headers: dict[str, str] = {}
        for ln in lines[1:]:
            name, sep, value = ln.partition(": ")
            if not sep:
                name, sep, value = ln.partition(":")
            if not sep or not name:
                self._error = RemoteProtocolError(
                    f"command {lines[0][:40]!r}: header line without ': ': {ln[:80]!r}")
                raise self._error
            headers[name] = value.strip()
        body = b""
        cl = headers.get("Content-Length") or next(
            (v for k, v in headers.items() if k.lower() == "content-length"), None)
        if cl is not None:
            if not _is_digits(cl):
                self._error = RemoteProtocolError(
                    f"command {lines[0][:40]!r}: non-numeric Content-Length {cl[:40]!r}")
                raise self._error
            n = int(cl)
            if n > self.max_body_bytes:
                self._error = RemoteProtocolError(
                    f"command {lines[0][:40]!r}: Content-Length {n} exceeds {self.max_body_bytes}")
                raise self._error
            if len(buf) - raw_end < n:
                if self._eof:
                    self._error = RemoteProtocolError("connection closed inside a command body")
                    raise self._error
                return None
            body = buf[raw_end:raw_end + n]
            raw_end += n
        self._buf = buf[raw_end:]
        return Command(lines[0].strip(), headers, body)
