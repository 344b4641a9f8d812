"""``callengine schema --out DIR``: JSON Schema for every message and an AsyncAPI 3 document.

Writes ``DIR/messages.schema.json`` (engine messages, ``engine.messages.json_schema()``),
``DIR/api.schema.json`` (every API request/response and CTI wire event) and ``DIR/asyncapi.yaml``
(as JSON, which is valid YAML): the CTI channels on NATS and every command as request-reply.
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Any

import msgspec

from api.events import EVENT_TYPES, CtiWireEvent
from api.services import METHODS, PACKAGE
from api.types import ErrorBody

__all__ = ["api_schema", "asyncapi", "write_schema", "add_parser", "schema_out"]


def api_schema() -> dict[str, Any]:
    types: list[Any] = [CtiWireEvent, ErrorBody]
    for method in METHODS.values():
        types += [method.request, method.response]
    unique = list(dict.fromkeys(types))
    _, defs = msgspec.json.schema_components(unique, ref_template="#/$defs/{name}")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": f"{PACKAGE} API",
            "$defs": defs}


def asyncapi() -> dict[str, Any]:
    types: list[Any] = [*EVENT_TYPES.values(), ErrorBody]
    for method in METHODS.values():
        types += [method.request, method.response]
    unique = list(dict.fromkeys(types))
    _, schemas = msgspec.json.schema_components(unique, ref_template="#/components/schemas/{name}")
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for name, cls in EVENT_TYPES.items():
        messages[name] = {"name": name, "contentType": "application/json",
                          "payload": {"$ref": f"#/components/schemas/{cls.__name__}"},
                          "headers": {"type": "object", "properties": {
                              "Nats-Msg-Id": {"type": "string", "description": "<tenant>:<seq>, JetStream dedupe"},
                              "Cti-Seq": {"type": "string", "description": "per-tenant sequence"},
                              "traceparent": {"type": "string", "description": "W3C trace context"}}}}
    for kind in ("call", "agent", "queue"):
        names = [n for n, c in EVENT_TYPES.items() if c.kind == kind or (kind == "call" and n == "UNKNOWN")]
        channel = f"cti_{kind}"
        channels[channel] = {
            "address": f"cti.{{tenant}}.{kind}.{{id}}.{{event}}",
            "description": f"CTI events about a {kind}; stored in the JetStream stream CTI (replay by seq or time)",
            "parameters": {"tenant": {}, "id": {}, "event": {"enum": names}},
            "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in names}}
        operations[f"receive_{kind}_events"] = {"action": "receive", "channel": {"$ref": f"#/channels/{channel}"}}
    for method in METHODS.values():
        if method.streaming:
            continue
        key = f"{method.service}_{method.name}"
        req, resp = f"{key}_request", f"{key}_reply"
        messages[req] = {"name": req, "contentType": "application/json",
                         "payload": {"$ref": f"#/components/schemas/{method.request.__name__}"},
                         "headers": {"type": "object", "properties": {
                             "Authorization": {"type": "string", "description": "Bearer <jwt>"},
                             "traceparent": {"type": "string", "description": "W3C trace context the command "
                                             "continues (e.g. a click-to-call Originate joins the caller's trace); "
                                             "over WebSocket the request frame's traceparent field, over HTTP "
                                             "the header"}}}}
        messages[resp] = {"name": resp, "contentType": "application/json", "payload": {"oneOf": [
            {"$ref": f"#/components/schemas/{method.response.__name__}"},
            {"$ref": "#/components/schemas/ErrorBody"}]}}
        channels[key] = {"address": f"api.{{tenant}}.{method.service}.{method.name}",
                         "parameters": {"tenant": {}}, "description": method.doc,
                         "messages": {req: {"$ref": f"#/components/messages/{req}"},
                                      resp: {"$ref": f"#/components/messages/{resp}"}}}
        operations[key] = {"action": "receive", "channel": {"$ref": f"#/channels/{key}"},
                           "summary": method.doc, "x-roles": sorted(method.roles),
                           "messages": [{"$ref": f"#/channels/{key}/messages/{req}"}],
                           "reply": {"messages": [{"$ref": f"#/channels/{key}/messages/{resp}"}]}}
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "callengine CTI and commands", "version": "1.0.0",
                 "description": "CTI events (per-tenant seq, JetStream replay) and API commands over NATS. "
                                "The same methods are served over Connect HTTP (POST /callengine.v1.<Service>/<Method>) "
                                "and WebSocket; see docs/api.md."},
        "defaultContentType": "application/json",
        "servers": {"nats": {"host": "127.0.0.1:4222", "protocol": "nats"}},
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }


def write_schema(out: str | pathlib.Path) -> list[pathlib.Path]:
    from engine.messages import json_schema

    directory = pathlib.Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, doc in (("messages.schema.json", json_schema()), ("api.schema.json", api_schema()),
                      ("asyncapi.yaml", asyncapi())):
        path = directory / name
        path.write_bytes(msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n")
        written.append(path)
    return written


def schema_out(args: argparse.Namespace) -> int:
    """The ``--out DIR`` action for ``callengine schema``."""
    for path in write_schema(args.out):
        print(path)
    return 0


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("api-schema", help="write JSON Schema and the AsyncAPI 3 document to a directory")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=schema_out)
