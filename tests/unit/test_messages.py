"""Every message, command, effect, CTI event and CDR round-trips through JSON and msgpack, and has a schema."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import messages as m
from tests.support.samples import sample

ALL = list(m.ALL_MESSAGE_TYPES) + [m.CtiEvent, m.Cdr]


def test_every_union_member_is_tagged_and_frozen():
    tags = set()
    for t in m.ALL_MESSAGE_TYPES:
        info = t.__struct_config__
        assert info.frozen and info.tag_field == "type", t
        assert info.tag not in tags, f"duplicate tag {info.tag}"
        tags.add(info.tag)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_json_and_msgpack_round_trip(cls):
    value = sample(cls)
    assert msgspec.json.decode(msgspec.json.encode(value), type=cls) == value
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(value), type=cls) == value


@pytest.mark.parametrize("cls", [t for t in m.ALL_MESSAGE_TYPES if t in m.Message.__args__], ids=lambda c: c.__name__)
def test_union_decoders_dispatch_on_the_tag(cls):
    value = sample(cls)
    assert m.message_json_decoder.decode(m.json_encoder.encode(value)) == value
    assert m.message_msgpack_decoder.decode(m.msgpack_encoder.encode(value)) == value


def test_effects_decode_including_nested_messages():
    eff = m.Send(to="queue", to_id="q1", message=m.QueueCall(queue_id="q1", call_id="c1", at=1.0))
    media = m.SendMedia(command=m.MediaOriginate(call_id="c1", leg="c1-1", destination="1001"))
    for e in (eff, media, m.WriteCdr(cdr=sample(m.Cdr))):
        assert m.effect_json_decoder.decode(m.json_encoder.encode(e)) == e


def test_json_schema_covers_every_type():
    schema = m.json_schema()
    names = set(schema["$defs"])
    assert {t.__name__ for t in ALL} <= names
    assert schema["$defs"]["ChannelCreated"]["properties"]["type"] == {"enum": ["channel_created"]}


def test_bad_input_is_a_typed_error_naming_the_field():
    with pytest.raises(msgspec.ValidationError) as info:
        m.message_json_decoder.decode(b'{"type":"channel_answered","call_id":5,"at":1.0}')
    assert "call_id" in str(info.value)
    with pytest.raises(msgspec.ValidationError):
        m.message_json_decoder.decode(b'{"type":"no_such_message"}')
    with pytest.raises(msgspec.DecodeError):
        m.message_json_decoder.decode(b"{not json")


def test_added_fields_have_defaults_so_old_payloads_still_decode():
    # a minimal payload with only the required fields decodes for every type
    for t in m.ALL_MESSAGE_TYPES:
        required = {f.name: msgspec.to_builtins(getattr(sample(t), f.name))
                    for f in msgspec.structs.fields(t) if f.required}
        payload = {"type": t.__struct_config__.tag, **required}
        assert msgspec.convert(payload, type=t) == t(**{k: getattr(sample(t), k) for k in required})


@given(call_id=st.text(max_size=40), at=st.floats(allow_nan=False, allow_infinity=False),
       digit=st.sampled_from(list("0123456789*#")), leg=st.text(max_size=20))
def test_arbitrary_text_round_trips(call_id, at, digit, leg):
    ev = m.DtmfReceived(call_id=call_id, at=at, digit=digit, leg=leg)
    assert m.message_json_decoder.decode(m.json_encoder.encode(ev)) == ev
    assert m.message_msgpack_decoder.decode(m.msgpack_encoder.encode(ev)) == ev
