"""Which extensions have a registered phone, and the ``DeviceState`` that agents need from it.

Rules
-----
* Pure bookkeeping: no I/O, no trio. ``apply(DeviceEvent)`` and ``sync(...)`` return the
  ``DeviceState`` messages to deliver (the caller delivers them), never send anything themselves.
* An extension may have several registrations (desk phone + softphone; a SIP Call-ID each): it is
  registered while at least one is left. ``sofia::unregister`` / ``sofia::expire`` remove the one
  they name (an unknown Call-ID removes nothing); one without a Call-ID removes them all.
* ``DeviceState`` is emitted only on a change of "registered at all", and only for extensions an
  agent uses (``agent_for(extension)`` is supplied by the caller: the node's agents or the
  configuration). Re-registrations (refreshes every few minutes) emit nothing.
* After a reconnect, registrations may have come and gone unseen: ``sync`` takes FreeSWITCH's own
  list (``show registrations``) as the truth.

Why: "an unregistered agent still shows Available" is a classic complaint about PBX queues. The
agent machine refuses offers while ``phone_registered`` is false; this registry is what keeps that
flag true to the switch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from adapters.freeswitch.mapping import DeviceEvent
from engine.messages import DeviceState

__all__ = ["DeviceRegistry", "PresenceBridge", "Registration", "parse_show_registrations"]


class Registration(msgspec.Struct, frozen=True, kw_only=True):
    extension: str
    contact: str
    registration_id: str = ""
    node: str = ""


AgentLookup = Callable[[str], str | None]


class DeviceRegistry:
    def __init__(self, agent_for: AgentLookup | None = None) -> None:
        self.agent_for: AgentLookup = agent_for or (lambda ext: None)
        #: extension -> registration id -> Registration
        self._regs: dict[str, dict[str, Registration]] = {}
        self.events = 0

    # -------------------------------------------------------------- queries
    def registered(self, extension: str) -> bool:
        return bool(self._regs.get(extension))

    def contact(self, extension: str) -> str:
        regs = self._regs.get(extension)
        if not regs:
            return ""
        return next(reversed(regs.values())).contact

    def extensions(self) -> set[str]:
        return {ext for ext, regs in self._regs.items() if regs}

    def device_state(self, agent_id: str, extension: str, at: float) -> DeviceState:
        """What an agent logging in on ``extension`` should be told right now."""
        return DeviceState(agent_id=agent_id, at=at, registered=self.registered(extension),
                           contact=self.contact(extension))

    # -------------------------------------------------------------- updates
    def apply(self, ev: DeviceEvent) -> list[DeviceState]:
        self.events += 1
        before = self.registered(ev.extension)
        regs = self._regs.setdefault(ev.extension, {})
        if ev.registered:
            regs.pop(ev.registration_id, None)  # keep the newest last (contact())
            regs[ev.registration_id] = Registration(extension=ev.extension, contact=ev.contact,
                                                    registration_id=ev.registration_id,
                                                    node=ev.node)
        elif not ev.registration_id:
            regs.clear()
        else:
            # an unknown Call-ID: its register was never seen; the others stay
            regs.pop(ev.registration_id, None)
        if not regs:
            self._regs.pop(ev.extension, None)
        return self._changed(ev.extension, before, ev.at)

    def sync(self, registrations: Iterable[Registration], at: float,
             node: str | None = None) -> list[DeviceState]:
        """Replace what we know (of ``node``, or of everything) by FreeSWITCH's list."""
        fresh: dict[str, dict[str, Registration]] = {}
        for reg in registrations:
            fresh.setdefault(reg.extension, {})[reg.registration_id] = reg
        touched = set(self._regs) | set(fresh)
        before = {ext: self.registered(ext) for ext in touched}
        for ext in touched:
            kept = {rid: r for rid, r in self._regs.get(ext, {}).items()
                    if node is not None and r.node != node}
            kept.update(fresh.get(ext, {}))
            if kept:
                self._regs[ext] = kept
            else:
                self._regs.pop(ext, None)
        out: list[DeviceState] = []
        for ext in sorted(touched):
            out += self._changed(ext, before[ext], at)
        return out

    def _changed(self, extension: str, before: bool, at: float) -> list[DeviceState]:
        now = self.registered(extension)
        if now == before:
            return []
        agent = self.agent_for(extension)
        if not agent:
            return []
        return [DeviceState(agent_id=agent, at=at, registered=now,
                            contact=self.contact(extension))]


class PresenceBridge:
    """Keeps logged-in agents' ``phone_registered`` true to the switch, from the moment of login.

    The agent machine assumes "registered" until told otherwise, and the registry only speaks up on
    a *change*. So at login the bridge tells the agent the current answer at once
    (:meth:`on_login`: the ``DeviceState`` goes to the node BEFORE the ``AgentLogin``, so a queue
    can never offer a call to the agent in between), and it maps the extension to the agent in the
    registry so that every later register / unregister / expire of that extension reaches it
    (``MediaNode`` delivers what the registry returns). ``node`` is anything with
    ``deliver_nowait`` (and ``ask`` for :meth:`login`): ``engine.actors.Node``.

    Usage (API layer, on AgentLogin)::

        bridge = PresenceBridge(links.registry, node)
        reply = await bridge.login(AgentLogin(agent_id=..., extension=..., at=now, ...))
    """

    def __init__(self, registry: DeviceRegistry, node: Any = None) -> None:
        self.registry = registry
        self.node = node
        self._agents: dict[str, str] = {}       # extension -> agent id
        self._extensions: dict[str, str] = {}   # agent id -> extension
        self._fallback = registry.agent_for
        registry.agent_for = self.agent_for

    def agent_for(self, extension: str) -> str | None:
        return self._agents.get(extension) or self._fallback(extension)

    def watch(self, agent_id: str, extension: str) -> None:
        old = self._extensions.pop(agent_id, None)
        if old is not None and self._agents.get(old) == agent_id:
            del self._agents[old]
        self._agents[extension] = agent_id
        self._extensions[agent_id] = extension

    def unwatch(self, agent_id: str) -> None:
        ext = self._extensions.pop(agent_id, None)
        if ext is not None and self._agents.get(ext) == agent_id:
            del self._agents[ext]

    def on_login(self, agent_id: str, extension: str, now: float) -> DeviceState:
        """Watch the extension and deliver (and return) the agent's DeviceState right now."""
        self.watch(agent_id, extension)
        state = self.registry.device_state(agent_id, extension, now)
        if self.node is not None:
            self.node.deliver_nowait(state)
        return state

    def on_logout(self, agent_id: str) -> None:
        self.unwatch(agent_id)

    async def login(self, cmd: Any) -> Any:
        """``on_login`` then ``node.ask(cmd)`` for an ``AgentLogin`` (returns the reply)."""
        self.on_login(cmd.agent_id, cmd.extension, cmd.at)
        return await self.node.ask(cmd)


def parse_show_registrations(text: str, node: str = "") -> list[Registration]:
    """Rows of ``show registrations`` (CSV: reg_user,realm,token,url,expires,...)."""
    out: list[Registration] = []
    lines = text.strip().splitlines()
    if not lines or not lines[0].startswith("reg_user,"):
        return out
    for line in lines[1:]:
        if not line.strip() or line.strip().endswith(" total."):
            continue
        cols = line.split(",")
        if len(cols) < 4:
            continue
        url = cols[3]
        contact = url.split("/", 2)[-1] if url.startswith("sofia/") else url
        out.append(Registration(extension=cols[0], contact=contact, registration_id=cols[2],
                                node=node))
    return out
