"""MWI to FreeSWITCH over ESL (#10 part 1, docs/voicemail.md).

``esl_mwi(links)`` is the ``MwiSender`` of ``adapters.postgres.voicemail.VoicemailService``: it fires
``sendevent MESSAGE_WAITING`` with the MWI-* headers (``engine.voicemail.mwi_headers``) on every
connected node, as mod_voicemail fires it itself; mod_sofia on the node where the phone is
registered turns it into a SIP NOTIFY (message-summary). A node that is down is skipped (the next
change sends the counts again); no node up at all raises ``EslError``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from adapters.freeswitch import codec
from adapters.freeswitch.connection import EslError
from adapters.freeswitch.nodes import MediaLinks

__all__ = ["esl_mwi"]


def esl_mwi(links: MediaLinks, timeout: float = 5.0) -> Callable[[dict[str, str]], Awaitable[None]]:
    async def send(headers: dict[str, str]) -> None:
        sent = 0
        for link in links.links.values():
            conn = link.conn
            if conn is None or not link.up:
                continue
            reply = await conn.command(codec.sendevent("MESSAGE_WAITING", headers), timeout)
            if not reply.ok:
                raise EslError(f"{link.name}: sendevent MESSAGE_WAITING: {reply.reply_text}")
            sent += 1
        if not sent:
            raise EslError("no FreeSWITCH node is connected: MWI not sent")

    return send
