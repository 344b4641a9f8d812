"""The ``callengine`` command.

Sub-commands are registered by the modules that own them: each has ``add_parser(subparsers)``,
which sets ``func`` (``args -> exit code``). This module owns the small ones.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from engine import __version__

#: modules that register sub-commands, in the order --help lists them
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "engine.demo", "engine.run", "engine.cli", "sim.cli", "sim.freeswitch.cli", "adapters.postgres.cli",
    "engine.cluster.cli",
)

EPILOG = """\
examples:
  callengine demo --seconds 75           the whole engine against the FreeSWITCH emulator
  callengine run                         a node: embedded NATS + PostgreSQL, ESL links from CALLENGINE_ESL_*
  callengine walkthrough                 one call, every transition printed
  callengine sim examples/textbook/mmn.yaml --seed 1
  callengine fs-emulator --port 8021     FreeSWITCH stand-in on 127.0.0.1
  callengine schema --out schema/        JSON Schema + AsyncAPI 3 of the CTI contract
  callengine cluster --shards 2          shards on a local Ray
  callengine report queues --interval 15m --csv
"""


def _walkthrough(args: argparse.Namespace) -> int:
    from sim.walkthrough import walkthrough

    walkthrough()
    return 0


def _schema(args: argparse.Namespace) -> int:
    if args.out:
        from api.schema import schema_out

        return schema_out(args)
    import msgspec

    from engine.messages import json_schema

    sys.stdout.write(msgspec.json.format(msgspec.json.encode(json_schema()), indent=2).decode() + "\n")
    return 0


def _fsm(args: argparse.Namespace) -> int:
    from engine.fsm.describe import all_markdown

    sys.stdout.write(all_markdown())
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The sub-commands this module owns."""
    p = subparsers.add_parser("walkthrough", help="walk one scripted call through the real state machines",
                              description="A caller rings the sales queue; an agent answers, holds and retrieves; "
                                          "the caller hangs up. Prints every transition and effect, then the CDR.")
    p.set_defaults(func=_walkthrough)
    p = subparsers.add_parser("schema", help="JSON Schema of every message, effect, CTI event and CDR "
                                             "(--out DIR: also the API schema and the AsyncAPI 3 document)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="write messages.schema.json, api.schema.json and asyncapi.yaml into DIR instead of printing")
    p.set_defaults(func=_schema)
    p = subparsers.add_parser("fsm", help="print the state machines' transition tables (Markdown)")
    p.set_defaults(func=_fsm)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callengine",
        description="callengine: the call-processing brain of a PBX and contact centre "
                    "(FreeSWITCH does the media, this engine decides).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"callengine {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
