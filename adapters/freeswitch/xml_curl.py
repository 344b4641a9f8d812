"""FreeSWITCH configuration from the engine: mod_xml_curl's directory and dialplan (#10 part 7).

A stock FreeSWITCH with mod_xml_curl bound to this endpoint asks the engine for its SIP users and
for what to do with each call, so it needs no per-tenant files (README, "Stock FreeSWITCH").

What mod_xml_curl sends (``POST``, ``application/x-www-form-urlencoded``): ``hostname``,
``section``, ``tag_name``, ``key_name``, ``key_value`` and then the request's own fields:

- ``section=directory`` (``tag_name=domain``, ``key_name=name``, ``key_value=<domain>``) with
  ``user``, ``domain`` and ``action`` (``sip_auth`` on REGISTER/INVITE, ``user_call`` when
  ``user/<ext>@<domain>`` is dialled, ``message-count`` for voicemail...), and ``key`` (``id``);
- ``section=dialplan`` (``tag_name=context``, ``key_value=<context>``) with the channel's fields:
  ``Caller-Destination-Number``, ``Caller-Context``, ``Hunt-Context``, ``variable_domain_name``,
  ``variable_callengine_tenant``...

Rules
1. ``build_reply(fields, snapshot)`` is pure: form fields + ``ConfigSnapshot`` -> XML text. The
   document is built with ElementTree, so every value from a request or a row is escaped; nothing
   is glued into markup. Characters XML cannot carry at all (C0 controls...) become U+FFFD.
2. Directory: ``user@domain`` is served when ``domain`` is a ``SipDomain`` of an enabled tenant and
   the user an enabled ``Extension`` of that tenant. The user carries the ``a1-hash`` param when
   its ``SipCredential`` is for that realm (no credential: no password param, so FreeSWITCH refuses
   its REGISTER), ``vm-enabled``, and the variables ``user_context`` (the tenant),
   ``callengine_tenant``, ``effective_caller_id_name/number`` and ``outbound_caller_id_*``. The
   domain carries the ``dial-string`` that ``user/<ext>@<domain>`` needs. A domain-only lookup gets
   the domain with no users. Anything else: the "not found" result, so another tenant's domain
   never reveals a user.
3. Dialplan: every call is handed to the engine: ``set callengine_tenant=<tenant>`` and ``park``
   (inbound ESL mode, docs/freeswitch.md), or ``socket <addr> async full`` when the engine runs an
   outbound server. The tenant is, in this order: the channel's ``callengine_tenant`` (set by rule
   2 on an authenticated user, so it is trusted and not set again), the tenant of the dialled DID
   when exactly one tenant has it, the tenant of the call's SIP domain. The context is the one
   FreeSWITCH asked for (it looks the context up by name in the reply).
4. Values that reach a dialplan ``set`` or a channel variable FreeSWITCH may expand must not
   carry ``$``, ``{``, ``}`` or ``^``: a tenant id outside ``[A-Za-z0-9_.@+-]`` is refused (the
   "not found" result, the call fails closed) instead of being set.
5. ``XmlCurlApp`` serves it over HTTP (hypercorn on trio, ``serve_xml_curl``): ``POST`` only, the
   form content type, a bounded body; optional Basic auth (mod_xml_curl's
   ``gateway-credentials``), compared in constant time. Bad requests get 400/401/405/413 with a
   plain-text reason; a lookup that finds nothing is 200 with the "not found" result (FreeSWITCH
   treats any non-200 as an error and logs it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import trio

from adapters.postgres.config import (
    ConfigSnapshot,
    Did,
    Extension,
    SipCredential,
    SipDomain,
    Tenant,
)
from api.asgi import BodyTooLarge, ClientGone, lifespan, read_body

__all__ = [
    "BadRequest", "XmlCurlApp", "XmlCurlStats", "a1_hash", "build_reply", "dialplan_xml", "directory_xml",
    "not_found_xml", "parse_form", "serve_xml_curl", "DEFAULT_PATH", "DIAL_STRING",
]

log = logging.getLogger("callengine.freeswitch.xml_curl")

DEFAULT_PATH = "/freeswitch/xml"
#: what ``user/<ext>@<domain>`` dials (FreeSWITCH's vanilla directory default, SIP only)
DIAL_STRING = ("{^^:sip_invite_domain=${dialed_domain}:presence_id=${dialed_user}@${dialed_domain}}"
               "${sofia_contact(*/${dialed_user}@${dialed_domain})}")
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.@+-]{1,200}$")
#: characters XML 1.0 cannot carry at all, even escaped (C0 controls but tab/LF/CR, U+FFFE/FFFF,
#: surrogates): ElementTree would write them raw and FreeSWITCH's parser would refuse the reply
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_MAX_FIELDS = 2000


class BadRequest(ValueError):
    """A request mod_xml_curl would not send (HTTP 400 with this message)."""


def a1_hash(extension: str, realm: str, password: str) -> str:
    """The digest A1 hash FreeSWITCH's ``a1-hash`` param takes: md5 of ``ext:realm:password``."""
    return hashlib.md5(f"{extension}:{realm}:{password}".encode()).hexdigest()  # noqa: S324 - SIP digest


def parse_form(body: bytes) -> dict[str, str]:
    """The form fields of a mod_xml_curl POST (first value of each name). ``BadRequest`` when the
    body is not UTF-8 form data."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8") from None
    try:
        pairs = parse_qsl(text.strip(), keep_blank_values=True, strict_parsing=False,
                          max_num_fields=_MAX_FIELDS, errors="strict")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not form data ({exc})") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if "\x00" in name or "\x00" in value:
            raise BadRequest(f"field {name[:40]!r} holds NUL")
        fields.setdefault(name, value)
    return fields


# ---- XML -----------------------------------------------------------------------------------------


def _xml_safe(value: str) -> str:
    """``value`` with the characters XML cannot carry replaced by U+FFFD."""
    return _NOT_XML.sub("\ufffd", value)


def _document(section: str) -> tuple[ET.Element, ET.Element]:
    doc = ET.Element("document", type="freeswitch/xml")
    return doc, ET.SubElement(doc, "section", name=section)


def _text(doc: ET.Element) -> str:
    for element in doc.iter():
        for name, value in element.attrib.items():
            element.set(name, _xml_safe(value))
    return ET.tostring(doc, encoding="unicode", xml_declaration=False)


def not_found_xml() -> str:
    """The reply that tells FreeSWITCH nothing matched."""
    doc, section = _document("result")
    ET.SubElement(section, "result", status="not found")
    return _text(doc)


def _params(parent: ET.Element, tag: str, items: list[tuple[str, str]]) -> None:
    box = ET.SubElement(parent, tag + "s")
    for name, value in items:
        ET.SubElement(box, tag, name=name, value=value)


def _tenant_of_domain(snapshot: ConfigSnapshot, domain: str) -> str | None:
    d = domain.strip().lower()
    for row in snapshot.of(SipDomain):
        if row.domain == d:
            tenant = snapshot.get(Tenant, row.tenant)
            return row.tenant if tenant is not None and tenant.enabled else None
    return None


def directory_xml(fields: Mapping[str, str], snapshot: ConfigSnapshot) -> str:
    """The directory reply for a lookup (rule 2)."""
    domain = (fields.get("domain") or fields.get("key_value") or "").strip().lower()
    user = fields.get("user", "").strip()
    key = fields.get("key", "id") or "id"
    tenant = _tenant_of_domain(snapshot, domain) if domain else None
    if tenant is None or key != "id" or not _SAFE_VALUE.match(tenant):
        return not_found_xml()
    doc, section = _document("directory")
    dom = ET.SubElement(section, "domain", name=domain)
    _params(dom, "param", [("dial-string", DIAL_STRING)])
    _params(dom, "variable", [("callengine_tenant", tenant)])
    if not user:
        return _text(doc)
    ext = snapshot.get(Extension, tenant, user)
    if ext is None or not ext.enabled:
        return not_found_xml()
    users = ET.SubElement(ET.SubElement(ET.SubElement(dom, "groups"), "group", name="default"), "users")
    node = ET.SubElement(users, "user", id=ext.extension)
    params = []
    cred = snapshot.get(SipCredential, tenant, ext.extension)
    if cred is not None and cred.realm == domain:
        params.append(("a1-hash", cred.a1_hash))
    params.append(("vm-enabled", "true" if ext.voicemail else "false"))
    _params(node, "param", params)
    variables = [("user_context", tenant), ("callengine_tenant", tenant),
                 ("effective_caller_id_name", ext.name or ext.extension),
                 ("effective_caller_id_number", ext.extension)]
    if ext.caller_id:
        variables += [("outbound_caller_id_name", ext.name or ext.caller_id),
                      ("outbound_caller_id_number", ext.caller_id)]
    _params(node, "variable", variables)
    return _text(doc)


def _did_tenant(snapshot: ConfigSnapshot, number: str) -> str | None:
    tenants = {d.tenant for d in snapshot.of(Did) if d.number == number}
    return tenants.pop() if len(tenants) == 1 else None


def dialplan_xml(fields: Mapping[str, str], snapshot: ConfigSnapshot, *, socket: str = "") -> str:
    """The dialplan reply for a call (rule 3): hand it to the engine."""
    context = fields.get("Hunt-Context") or fields.get("Caller-Context") or fields.get("key_value") or ""
    if not context:
        raise BadRequest("a dialplan request names its context (Hunt-Context, Caller-Context or key_value)")
    destination = fields.get("Hunt-Destination-Number") or fields.get("Caller-Destination-Number") or ""
    trusted = fields.get("variable_callengine_tenant", "")
    tenant = trusted or _did_tenant(snapshot, destination)
    if not tenant:
        for name in ("variable_domain_name", "variable_sip_to_host", "variable_sip_req_host"):
            if fields.get(name):
                tenant = _tenant_of_domain(snapshot, fields[name])
                if tenant:
                    break
    if tenant and not _SAFE_VALUE.match(tenant):
        log.error("dialplan: tenant %r cannot be set as a channel variable; call refused", tenant[:60])
        return not_found_xml()
    doc, section = _document("dialplan")
    section.set("description", "callengine: every call to the engine")
    ctx = ET.SubElement(section, "context", name=context)
    ext = ET.SubElement(ctx, "extension", name="callengine")
    cond = ET.SubElement(ext, "condition", field="destination_number", expression="^(.*)$")
    if tenant and not trusted:
        ET.SubElement(cond, "action", application="set", data=f"callengine_tenant={tenant}")
    if socket:
        ET.SubElement(cond, "action", application="socket", data=f"{socket} async full")
    else:
        ET.SubElement(cond, "action", application="park")
    return _text(doc)


def build_reply(fields: Mapping[str, str], snapshot: ConfigSnapshot, *, socket: str = "") -> str:
    """The XML mod_xml_curl gets for ``fields`` (rule 1). ``BadRequest`` when ``section`` is missing."""
    section = fields.get("section", "")
    if not section:
        raise BadRequest("no 'section' field: not a mod_xml_curl request")
    if section == "directory":
        return directory_xml(fields, snapshot)
    if section == "dialplan":
        return dialplan_xml(fields, snapshot, socket=socket)
    return not_found_xml()  # configuration, phrases, languages: not served here


# ---- HTTP ----------------------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass
class XmlCurlStats:
    served: int = 0
    not_found: int = 0
    refused: dict[int, int] = field(default_factory=dict)


class _Refused(Exception):
    def __init__(self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or []


class XmlCurlApp:
    """ASGI app: mod_xml_curl's POSTs at ``path`` -> ``build_reply`` on ``snapshot()`` (rule 5).

    ``credentials`` is ``"user:password"`` (mod_xml_curl's ``gateway-credentials``); empty: no auth.
    ``socket``: hand calls to this outbound ESL address instead of parking them.
    """

    def __init__(self, snapshot: Callable[[], ConfigSnapshot], *, credentials: str = "", socket: str = "",
                 path: str = DEFAULT_PATH, max_body: int = 256 * 1024) -> None:
        if credentials and ":" not in credentials:
            raise ValueError("credentials are 'user:password'")
        self.snapshot = snapshot
        self._credentials = credentials.encode()
        self.socket = socket
        self.path = path
        self.max_body = max_body
        self.stats = XmlCurlStats()

    def __repr__(self) -> str:
        return f"XmlCurlApp(path={self.path!r}, auth={'on' if self._credentials else 'off'})"

    def _check_auth(self, headers: dict[bytes, bytes]) -> None:
        if not self._credentials:
            return
        challenge = [(b"www-authenticate", b'Basic realm="callengine"')]
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"basic":
            raise _Refused(401, "authentication required", challenge)
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise _Refused(401, "malformed Basic credentials", challenge) from None
        if not hmac.compare_digest(given, self._credentials):
            raise _Refused(401, "wrong credentials", challenge)

    async def _body(self, receive: Receive, headers: dict[bytes, bytes]) -> bytes:
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:
            raise _Refused(413, f"body larger than {self.max_body} bytes")
        try:
            return await read_body(receive, self.max_body)
        except BodyTooLarge:
            raise _Refused(413, f"body larger than {self.max_body} bytes") from None
        except ClientGone:
            raise _Refused(400, "client went away") from None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        try:
            if scope["path"] != self.path:
                raise _Refused(404, f"no such path; mod_xml_curl's gateway-url is {self.path}")
            self._check_auth(headers)
            if scope["method"] != "POST":
                raise _Refused(405, "POST only (mod_xml_curl's default)", [(b"allow", b"POST")])
            ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if ctype != b"application/x-www-form-urlencoded":
                raise _Refused(400, "Content-Type must be application/x-www-form-urlencoded")
            body = await self._body(receive, headers)
            try:
                xml = build_reply(parse_form(body), self.snapshot())
            except BadRequest as exc:
                raise _Refused(400, str(exc)) from None
        except _Refused as exc:
            self.stats.refused[exc.status] = self.stats.refused.get(exc.status, 0) + 1
            await self._respond(send, exc.status, f"{exc}\n".encode(), b"text/plain; charset=utf-8", exc.headers)
            return
        self.stats.served += 1
        if 'name="result"' in xml[:80]:
            self.stats.not_found += 1
        await self._respond(send, 200, xml.encode("utf-8"), b"text/xml; charset=utf-8")

    @staticmethod
    async def _respond(send: Send, status: int, body: bytes, ctype: bytes,
                       extra: list[tuple[bytes, bytes]] | None = None) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode()),
                                *(extra or [])]})
        await send({"type": "http.response.body", "body": body})


async def serve_xml_curl(app: XmlCurlApp, host: str = "127.0.0.1", port: int = 0, *,
                         task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``app`` with hypercorn on trio; ``task_status`` gets the gateway URL (with the path)."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.keep_alive_timeout = 30
    config.graceful_timeout = 1.0

    class _Status:
        def started(self, binds: list[str] | None = None) -> None:
            task_status.started((binds[0] if binds else "") + app.path)

    await serve(app, config, task_status=_Status())  # type: ignore[arg-type]
