"""What travels between shard hosts: batches of envelopes, msgpack-encoded once per batch.

Rules
1. A batch is one Ray call (or one NATS message): never one per message (STYLE.md §5). A batch
   is ``bytes`` so Ray moves it without pickling thousands of objects.
2. Envelopes are routing messages and external events addressed to (kind, id), plus ``Adopt``:
   an actor handed over with its state and timers. An ``Adopt`` travels on the same ordered link as
   the messages the old owner forwards after it, so the new owner always has the actor first.
3. ``hops`` bounds forwarding: a message that bounced more than ``MAX_HOPS`` times between hosts
   with disagreeing directories is dead-lettered instead of looping.
"""

from __future__ import annotations

from typing import Any

import msgspec

from engine.fsm.agent import Agent
from engine.fsm.call import Call
from engine.fsm.queue import Queue
from engine.messages import Message

__all__ = ["MAX_HOPS", "Adopt", "Batch", "Envelope", "Image", "decode_batch", "decode_image",
           "encode_batch", "encode_image", "state_of"]

MAX_HOPS = 4


class Image(msgspec.Struct, frozen=True, kw_only=True):
    """An actor's portable form: its immutable state and its armed timers (absolute deadlines on
    the cluster clock, see clock.py). Snapshots and hand-overs both use it."""

    kind: str
    actor_id: str
    #: an ``Agent``, ``Queue`` or ``Call``; encoded untagged, so it decodes to builtins and
    #: ``state_of`` converts it by ``kind``
    state: Any
    timers: tuple[tuple[str, float], ...] = ()
    #: when this image was taken (cluster clock); the newest image of an actor wins
    taken_at: float = 0.0


class _Tagged(msgspec.Struct, frozen=True, array_like=True, tag=True):
    pass


class Envelope(_Tagged, frozen=True, array_like=True, tag="e"):
    kind: str
    actor_id: str
    message: Message
    hops: int = 0


class Adopt(_Tagged, frozen=True, array_like=True, tag="a"):
    image: Image
    mail: tuple[Message, ...] = ()


class Batch(msgspec.Struct, frozen=True, array_like=True):
    source: str
    items: list[Envelope | Adopt]
    seq: int = 0


_encoder = msgspec.msgpack.Encoder()
_batch_decoder = msgspec.msgpack.Decoder(Batch)
_image_decoder = msgspec.msgpack.Decoder(Image)


def encode_batch(source: str, items: list[Any], seq: int = 0) -> bytes:
    return _encoder.encode(Batch(source=source, items=items, seq=seq))


def decode_batch(data: bytes) -> Batch:
    return _batch_decoder.decode(data)


def encode_image(image: Image) -> bytes:
    return _encoder.encode(image)


def decode_image(data: bytes) -> Image:
    return _image_decoder.decode(data)


STATE_TYPES: dict[str, type] = {"agent": Agent, "queue": Queue, "call": Call}


def state_of(image: Image) -> Any:
    """The image's state as its machine's Struct (decoded images carry builtins)."""
    tp = STATE_TYPES[image.kind]
    return image.state if isinstance(image.state, tp) else msgspec.convert(image.state, tp)
