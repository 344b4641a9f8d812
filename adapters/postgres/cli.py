"""``callengine report`` (queue KPIs, agent performance), ``callengine db`` (migrate, dsn, stop) and
``callengine voicemail-files`` (the audio files of deleted voicemail messages, docs/voicemail.md).

``report`` prints a table in the terminal, or ``--csv`` / ``--json`` for machines. Times are UTC;
``--from``/``--to`` take ISO dates or times (default: today so far), ``--interval`` seconds or
15m / 1h. The DSN is ``--dsn``, else ``CALLENGINE_PG_DSN``, else the embedded server.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import sys
from typing import Any

import msgspec

__all__ = ["add_parser", "run_report", "run_db", "run_voicemail_files", "render"]


def _when(text: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _interval(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("report", help="queue KPIs per interval or agent performance, from PostgreSQL",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["queues", "agents"])
    p.add_argument("--from", dest="start", type=_when, help="start (ISO, UTC unless an offset is given)")
    p.add_argument("--to", dest="end", type=_when, help="end, exclusive (default: now)")
    p.add_argument("--interval", type=_interval, default=900.0, help="queue KPI bucket (900, 15m, 1h)")
    p.add_argument("--tenant")
    p.add_argument("--queue", help="one queue only")
    p.add_argument("--agent", help="one agent only")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true")
    fmt.add_argument("--json", action="store_true")
    p.add_argument("--dsn", help="PostgreSQL DSN (default: CALLENGINE_PG_DSN or the embedded server)")
    p.set_defaults(func=run_report)

    d = subparsers.add_parser("db", help="the PostgreSQL store: migrate, print the DSN, stop the embedded server")
    d.add_argument("action", choices=["migrate", "dsn", "stop"])
    d.add_argument("--dsn")
    d.set_defaults(func=run_db)

    v = subparsers.add_parser(
        "voicemail-files", help="audio files of deleted voicemail messages, for removal on the media server",
        description="list: one 'tenant<TAB>message id<TAB>path' line per deleted message whose file is not known "
                    "to be removed (path relative to the media server's recordings prefix). done: read "
                    "'tenant<TAB>message id' lines (the list's first two columns) from stdin and record those "
                    "files as removed. The engine cannot delete files on the media server (docs/voicemail.md).")
    v.add_argument("action", choices=["list", "done"])
    v.add_argument("--limit", type=int, default=1000)
    v.add_argument("--dsn")
    v.set_defaults(func=run_voicemail_files)


def _rows(items: list[msgspec.Struct]) -> list[dict[str, Any]]:
    out = []
    for item in items:
        d = msgspec.to_builtins(item)
        out.append(d)
    return out


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    if isinstance(v, dict):
        return " ".join(f"{k}={_cell(x)}" for k, x in v.items()) or "-"
    return str(v)


def render(rows: list[dict[str, Any]], fmt: str) -> str:
    """``table`` (aligned text), ``csv`` or ``json``."""
    if fmt == "json":
        return msgspec.json.format(msgspec.json.encode(rows), indent=2).decode() + "\n"
    if not rows:
        return "" if fmt == "csv" else "(no data)\n"
    columns = list(rows[0])
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if r[c] is None else (msgspec.json.encode(r[c]).decode() if isinstance(r[c], dict)
                                                 else r[c]) for c in columns])
        return buf.getvalue()
    cells = [[_cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True)))
              for row in cells]
    return "\n".join(lines) + "\n"


def run_report(args: argparse.Namespace) -> int:
    import trio

    from adapters.postgres import open_database
    from adapters.postgres.stats import agent_performance, queue_kpis

    end = args.end or dt.datetime.now(dt.UTC)
    start = args.start or end.replace(hour=0, minute=0, second=0, microsecond=0)

    async def main() -> list[dict[str, Any]]:
        async with open_database(args.dsn) as pg:
            if args.what == "queues":
                return _rows(await queue_kpis(pg, start, end, interval_s=args.interval, tenant=args.tenant,
                                              queue_id=args.queue))
            return _rows(await agent_performance(pg, start, end, tenant=args.tenant, agent_id=args.agent))

    rows = trio.run(main)
    sys.stdout.write(render(rows, "csv" if args.csv else "json" if args.json else "table"))
    return 0


def run_db(args: argparse.Namespace) -> int:
    import trio

    from adapters.postgres import open_database
    from adapters.postgres.embedded import EmbeddedPostgres, redact, resolve_dsn, state_dir

    if args.action == "stop":
        EmbeddedPostgres(state_dir() / "pg").stop()
        return 0
    if args.action == "dsn":
        print(redact(args.dsn or resolve_dsn()))
        return 0

    async def main() -> None:
        async with open_database(args.dsn):
            pass

    trio.run(main)
    print("migrations applied")
    return 0


def run_voicemail_files(args: argparse.Namespace) -> int:
    import trio

    from adapters.postgres import open_database
    from adapters.postgres.voicemail import VoicemailStore

    keys: list[tuple[str, str]] = []
    if args.action == "done":
        for line in sys.stdin:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 2 and parts[0] and parts[1]:
                keys.append((parts[0], parts[1]))

    async def main() -> list[tuple[str, str, str]] | int:
        async with open_database(args.dsn) as pg:
            store = VoicemailStore(pg)
            if args.action == "list":
                return await store.files_to_remove(args.limit)
            return await store.mark_files_removed(keys)

    result = trio.run(main)
    if isinstance(result, int):
        print(f"{result} files recorded as removed", file=sys.stderr)
    else:
        for tenant, message_id, path in result:
            sys.stdout.write(f"{tenant}\t{message_id}\t{path}\n")
    return 0
