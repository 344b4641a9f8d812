"""``callengine sim SCENARIO [--seed N] [--report DIR] [--seeds K] [--json]``.

Rules
1. Bad input (a broken scenario or flow file) prints one line naming the file, the path in the
   document and what was expected, and exits 2; never a traceback.
2. An invariant violation prints the seed, what broke and a one-line replay command, and exits 1.
3. The progress bar (stderr) appears only for runs longer than a second and only on a terminal or
   when forced; it reads the wall clock, which never feeds back into the simulation.

Theory of operation
One seed: run, write ``report.json`` and ``report.html`` into ``--report DIR`` (if given), print a
summary (or the JSON with ``--json``). ``--seeds K`` runs seeds N..N+K-1 (deterministic-simulation-
testing style), keeps going past violations and ends with a summary of them.
"""

from __future__ import annotations

import argparse
import pathlib
import shlex
import sys
import time
from typing import Any

from engine.flows.loader import FlowError
from sim.core import InvariantViolation, Simulator
from sim.report import build_report, to_html, to_json
from sim.scenario import Scenario, load_scenario

__all__ = ["add_parser", "run_sim", "main", "simulate"]


def add_parser(subparsers: Any) -> None:
    """Register the ``sim`` sub-command (``set_defaults(func=run_sim)``)."""
    p = subparsers.add_parser("sim", help="run the deterministic call-centre simulator on a scenario",
                              description=__doc__.split("\n\n")[0])
    _arguments(p)
    p.set_defaults(func=run_sim)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", help="scenario file (YAML or TOML)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the scenario's)")
    p.add_argument("--seeds", type=int, default=1, metavar="K", help="run K seeds from --seed on and summarise violations")
    p.add_argument("--report", metavar="DIR", help="write report.json and report.html into DIR")
    p.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="override the scenario's duration_s")
    p.add_argument("--no-check", action="store_true", help="skip the per-step invariant checks (faster)")
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto")


class _Progress:
    def __init__(self, total: float, mode: str, label: str) -> None:
        self.total = total
        self.label = label
        self.enabled = mode == "always" or (mode == "auto" and sys.stderr.isatty())
        self.started = time.monotonic()
        self.shown = False

    def __call__(self, now: float) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.started
        if elapsed < 1.0:
            return
        frac = min(1.0, now / self.total) if self.total else 1.0
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\r{self.label} [{bar:<30}] {frac * 100:5.1f}% {elapsed:5.1f}s")
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


def simulate(scenario: Scenario, seed: int, *, check: bool = True, progress: Any = None) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Run one seed; return the report and the answered waits per queue (for the HTML plots)."""
    sim = Simulator(scenario, seed, check=check, progress=progress)
    stats = sim.run()
    waits = {qid: list(qs.total.waits or []) for qid, qs in stats.queues.items()}
    return build_report(stats, sim.seed), waits


def _replay(args: argparse.Namespace, seed: int) -> str:
    extra = f" --duration {args.duration:g}" if args.duration else ""
    return f"callengine sim {shlex.quote(args.scenario)} --seed {seed}{extra}"


def run_sim(args: argparse.Namespace) -> int:
    try:
        scenario = load_scenario(args.scenario)
    except FlowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.duration:
        import msgspec

        scenario = msgspec.structs.replace(scenario, duration_s=args.duration,
                                           warmup_s=min(scenario.warmup_s, args.duration / 2))
    first = scenario.seed if args.seed is None else args.seed
    seeds = list(range(first, first + max(1, args.seeds)))
    violations: list[InvariantViolation] = []
    report: dict[str, Any] | None = None
    for seed in seeds:
        bar = _Progress(scenario.duration_s, args.progress, f"seed {seed}")
        try:
            report, waits = simulate(scenario, seed, check=not args.no_check, progress=bar)
        except InvariantViolation as exc:
            bar.done()
            violations.append(exc)
            print(f"INVARIANT VIOLATED (seed {exc.seed}) at t={exc.at:.3f}s: {exc.what}", file=sys.stderr)
            print(f"  replay: {_replay(args, exc.seed)}", file=sys.stderr)
            continue
        bar.done()
        if len(seeds) == 1:
            if args.report:
                out = pathlib.Path(args.report)
                out.mkdir(parents=True, exist_ok=True)
                (out / "report.json").write_text(to_json(report))
                (out / "report.html").write_text(to_html(report, waits))
            if args.json:
                sys.stdout.write(to_json(report))
            else:
                _summary(report)
        else:
            t = report["total"]
            print(f"seed {seed}: ok  offered {t['offered']}  answered {t['answered']}  "
                  f"abandoned {t['abandoned']}  SL {t['sl']}  ASA {t['asa_s']}")
    if len(seeds) > 1:
        print(f"{len(seeds)} seeds, {len(violations)} with violations"
              + (": " + ", ".join(str(v.seed) for v in violations) if violations else ""))
    return 1 if violations else 0


def _summary(report: dict[str, Any]) -> None:
    print(f"{report['scenario']} (seed {report['seed']}): {report['calls']['created']} calls, "
          f"{report['events']} events")
    head = f"{'queue':<16}{'offered':>9}{'answered':>9}{'aband.':>8}{'ASA s':>8}{'SL':>7}{'P(wait)':>9}{'AHT s':>8}"
    print(head)
    rows = [(qid, q["figures"], q["theory"]) for qid, q in report["queues"].items()] + [("TOTAL", report["total"], None)]
    for name, f, th in rows:
        print(f"{name:<16}{f['offered']:>9}{f['answered']:>9}{f['abandoned']:>8}{_n(f['asa_s']):>8}"
              f"{_n(f['sl'], 3):>7}{_n(f['p_wait'], 3):>9}{_n(f.get('aht_s')):>8}")
        if th:
            extra = (f"  P(abandon) {th['p_abandon']:.4f} (measured {_n(f['abandon_rate'], 4)})"
                     if th["model"] == "erlang_a" else f"  SL {th['sl']:.3f}  ASA {th['asa_s']:.1f} s")
            print(f"{'  ' + th['model']:<16} A={th['offered_load_erlangs']} N={th['agents']}  P(wait) {th['p_wait']:.3f}{extra}")


def _n(v: Any, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    """``python -m sim ...`` (the same as ``callengine sim ...``)."""
    parser = argparse.ArgumentParser(prog="callengine sim")
    _arguments(parser)
    return run_sim(parser.parse_args(argv))
