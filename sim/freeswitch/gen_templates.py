"""Generate ``sim/freeswitch/templates.py`` from the real FreeSWITCH 1.10.12 recordings.

Rules: run by hand (``python -m sim.freeswitch.gen_templates [shared_dir]``) whenever the
recordings change; the output is committed so the emulator never needs shared/ at run time.

Theory: for every event type (CUSTOM keyed by subclass) one recorded occurrence is chosen — a
sofia channel with the most header lines, since the emulator's channels look like SIP channels.
Its header NAMES are kept in wire order, duplicates included (CHANNEL_HANGUP_COMPLETE really
carries Hangup-Cause twice), ``variable_*`` removed (the emulator adds its own few variables).
Each name keeps the recorded value as a default only when it is static (codec, versions, file
names); call-specific values (UUIDs, timestamps, names, numbers) become None and must be supplied
by the emulator. Other-Leg-* / Other-Type are kept in the template only as a marker of where
the block goes; the emulator emits them only for channels with a peer.
"""

from __future__ import annotations

import pprint
import re
import sys
from pathlib import Path

from adapters.freeswitch.codec import EslParser, url_decode

_DYNAMIC = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-|^\d{10,}$|@|^Sun,|^\d{4}-\d\d-\d\d|^\d+\.\d+\.\d+\.\d+")
_DYNAMIC_NAMES = re.compile(
    r"UUID|Unique-ID|Caller-|Other-Leg-|Channel-Name|Sequence|Date|Time|Digit|Path|Cause|"
    r"Application|Job-|API-|Member|Conference-Size|Size|Action|^from-|^to-|^contact|^call-id|"
    r"^expires|^username|^realm|^network-|^user|^sip_|^number_alias|^effective_|^outbound_|"
    r"^presence-hosts|^profile-name|^status|^rpid|Answer-State|Channel-State|Call-State|"
    r"Call-Direction|^Event-Info|Up-Time|Session|Idle-CPU|Uptime")


def _key(ev) -> str:
    return f"CUSTOM::{ev.subclass}" if ev.name == "CUSTOM" else ev.name


def generate(shared: Path) -> dict[str, list[tuple[str, str | None]]]:
    fs = shared / "esl" / "captures" / "fs-1.10.12"
    best: dict[str, tuple[tuple[int, int], list[tuple[str, str | None]]]] = {}
    for path in sorted(fs.glob("[0-9]*.txt")):
        if path.name.endswith(".sent.txt"):
            continue
        p = EslParser()
        p.receive_data(path.read_bytes().split(b"\n", 1)[1])
        for fr in p:
            ev = fr.event
            if ev is None or ev.format != "plain" or fr.content_type == "command/reply":
                continue
            lines = ev._head.decode().split("\n")  # raw lines keep duplicates
            pairs = []
            for ln in lines:
                name, _, value = ln.partition(": ")
                if name.startswith("variable_"):
                    continue
                dec = url_decode(value)
                static = not (_DYNAMIC_NAMES.search(name) or _DYNAMIC.search(dec))
                pairs.append((name, dec if static else None))
            chan = str(ev.get("Channel-Name") or "")
            score = (1 if chan.startswith("sofia/") else 0, len(pairs))
            k = _key(ev)
            if k not in best or score > best[k][0]:
                best[k] = (score, pairs)
    return {k: v for k, (_, v) in sorted(best.items())}


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parents[2]
    shared = Path(argv[0]) if argv else root.parent / "shared"
    tpl = generate(shared)
    out = root / "sim" / "freeswitch" / "templates.py"
    out.write_text(
        '"""Event header layouts copied from real FreeSWITCH 1.10.12 recordings (GENERATED).\n\n'
        "Do not edit: regenerate with ``python -m sim.freeswitch.gen_templates``. Each entry is the\n"
        "ordered (name, static default or None) list of one recorded occurrence, variable_* removed.\n"
        '"""\n\n'
        f"TEMPLATES: dict[str, list[tuple[str, str | None]]] = {pprint.pformat(tpl, width=99)}\n")
    print(f"wrote {out} ({len(tpl)} event types)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
