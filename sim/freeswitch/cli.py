"""``callengine fs-emulator``: run the FreeSWITCH ESL emulator from the command line.

Rules: binds to 127.0.0.1 unless told otherwise; runs until Ctrl-C. The main CLI (engine/cli.py)
wires it with ``add_parser(subparsers)`` and calls ``run(args)`` (sync; it starts trio itself).
``async_run(args)`` is the same for callers already inside trio.
"""

from __future__ import annotations

import argparse
import sys

import trio

from .server import FreeSwitchEmulator


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("fs-emulator", help="run a FreeSWITCH Event Socket emulator",
                              description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8021, help="ESL port (default 8021, 0 = any)")
    p.add_argument("--password", default="ClueCon")
    p.add_argument("--heartbeat", type=float, default=20.0, help="HEARTBEAT interval, s (0=off)")
    p.add_argument("--calls-per-second", type=float, default=0.0,
                   help="generate inbound calls at this rate (parked, for load)")
    p.add_argument("--answer-delay", type=float, default=0.02,
                   help="seconds before an originated leg answers")
    p.add_argument("--playback-seconds", type=float, default=1.0)
    p.set_defaults(func=run)
    return p


def build(args: argparse.Namespace) -> FreeSwitchEmulator:
    return FreeSwitchEmulator(host=args.host, port=args.port, password=args.password,
                              heartbeat=args.heartbeat or None,
                              calls_per_second=args.calls_per_second,
                              answer_delay=args.answer_delay,
                              playback_seconds=args.playback_seconds)


async def async_run(args: argparse.Namespace) -> None:
    emu = build(args)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(emu.run)
        print(f"fs-emulator listening on {args.host}:{port} (password {args.password!r})",
              flush=True)


def run(args: argparse.Namespace) -> int:
    try:
        trio.run(async_run, args)
    except KeyboardInterrupt:
        pass
    except BaseExceptionGroup as group:  # Ctrl-C arrives wrapped by the nursery
        rest = group.subgroup(lambda e: not isinstance(e, KeyboardInterrupt | BaseExceptionGroup))
        if rest is not None:
            raise
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fs-emulator")
    sub = ap.add_subparsers(dest="cmd", required=True)
    add_parser(sub)
    args = ap.parse_args(["fs-emulator", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
