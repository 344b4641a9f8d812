"""What travels between shard hosts: batches of envelopes, msgpack-encoded once per batch.

Rules
1. A batch is one Ray call (or one NATS message): never one per message (STYLE.md §5). A batch
   is ``bytes`` so Ray moves it without pickling thousands of objects.
2. Envelopes are routing messages and external events addressed to (kind, id), plus ``Adopt``:
   an actor handed over with its state and timers. An ``Adopt`` travels on the same link as the
   messages the old owner forwards after it; the receiver applies a link's batches in order
   (links.LinkInbox), so the new owner has the actor first.
3. ``ReplyTo`` carries a command's ``Reply`` back to the shard that asked (``origin_of``: request
   ids made by ``ShardNode.ask`` are ``<shard>|<id>``).
4. Every batch of a link carries ``(source, incarnation, seq)``: ``seq`` counts 1, 2, 3, ... per
   destination, ``incarnation`` is the sending outbox's birth (ns), new after a restart. The
   receiver applies a batch once and in the link's order (``links.LinkInbox``); a retried copy is
   dropped. ``seq == 0``: unsequenced.
5. ``hops`` bounds forwarding: a message that bounced more than ``MAX_HOPS`` times between hosts
   with disagreeing directories is dead-lettered instead of looping.
"""

from __future__ import annotations

from typing import Any

import msgspec

from engine.fsm.agent import Agent
from engine.fsm.call import Call
from engine.fsm.queue import Queue
from engine.messages import Message, Reply

__all__ = ["MAX_HOPS", "ORIGIN_SEP", "Adopt", "Batch", "Envelope", "Image", "ReplyTo",
           "decode_batch", "decode_image", "encode_batch", "encode_image", "origin_of", "state_of",
           "with_origin"]

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


class ReplyTo(_Tagged, frozen=True, array_like=True, tag="r"):
    """A command's answer, on its way back to the asking shard."""

    reply: Reply


class Batch(msgspec.Struct, frozen=True, array_like=True):
    source: str
    items: list[Envelope | Adopt | ReplyTo]
    seq: int = 0
    incarnation: int = 0


ORIGIN_SEP = "|"


def with_origin(shard: str, request_id: str) -> str:
    return f"{shard}{ORIGIN_SEP}{request_id}"


def origin_of(request_id: str) -> str:
    """The shard that asked (``""`` for a request id without an origin, e.g. from the API bus)."""
    shard, sep, _ = request_id.partition(ORIGIN_SEP)
    return shard if sep else ""


_encoder = msgspec.msgpack.Encoder()
_batch_decoder = msgspec.msgpack.Decoder(Batch)
_image_decoder = msgspec.msgpack.Decoder(Image)


def encode_batch(source: str, items: list[Any], seq: int = 0, incarnation: int = 0) -> bytes:
    return _encoder.encode(Batch(source=source, items=items, seq=seq, incarnation=incarnation))


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
