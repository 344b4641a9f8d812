"""Human-readable transition tables, generated from the machines' own tables.

The README's state-machine section is produced by ``callengine fsm`` and a test checks that it
matches, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from engine.fsm import agent, call, queue
from engine.fsm.base import Machine, ignore

MACHINES: tuple[tuple[str, Machine, type[enum.Enum], tuple[type, ...]], ...] = (
    ("Call", call.MACHINE, call.CallState, call.CALL_EVENTS),
    ("Agent", agent.MACHINE, agent.AgentState, agent.AGENT_EVENTS),
    ("Queue", queue.MACHINE, queue.QueueState, queue.QUEUE_EVENTS),
)


def _names(types: Iterable[type]) -> str:
    return ", ".join(sorted(t.__name__ for t in types)) or "-"


def machine_markdown(title: str, machine: Machine, states: type[enum.Enum], events: tuple[type, ...]) -> str:
    lines = [f"#### {title}", "", "| state | acts on | refuses (typed reply) | ignores (duplicate/late) |",
             "| --- | --- | --- | --- |"]
    for state in states:
        acts, refuses, ignores = [], [], []
        for event in events:
            handler = machine.table.get((state, event))
            if handler is None:
                continue
            if handler is ignore:
                ignores.append(event)
            elif handler.__name__ == "_refuse":
                refuses.append(event)
            else:
                acts.append(event)
        doc = f"`{state.name}`"
        lines.append(f"| {doc} | {_names(acts)} | {_names(refuses)} | {_names(ignores)} |")
    lines.append("")
    lines.append("Any other message raises `IllegalTransition(state, event)`.")
    return "\n".join(lines)


def all_markdown() -> str:
    return "\n\n".join(machine_markdown(*m) for m in MACHINES) + "\n"


def update_readme(path: str = "README.md") -> bool:
    """Rewrite the README's generated section; True when it changed."""
    begin, end = "<!-- fsm-tables:begin -->", "<!-- fsm-tables:end -->"
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{begin}\n{all_markdown()}{end}{tail}"
    if new != text:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(new)
    return new != text


if __name__ == "__main__":
    print("README.md updated" if update_readme() else "README.md already up to date")
