"""Simulation statistics and the report: JSON for machines, one HTML page with inline SVG for people.

Rules
1. Everything is measured from what the production machines publish: ``QUEUE_ENTERED`` (as the
   simulator delivers ``QueueCall``), ``QUEUE_LEFT`` CTI events, CDRs and agent state changes. The
   simulator never second-guesses a queue's own accounting.
2. A call belongs to the interval in which it *entered the queue*; calls that entered during the
   warm-up are reported per interval (flagged) but left out of the totals. Agent occupancy and queue
   length are time-weighted over [warm-up, duration).
3. Deterministic output: insertion-ordered dicts, floats rounded to 6 decimals, infinities and NaN
   written as null; the same run gives the same bytes.

Definitions (also in docs/simulator.md)
- offered: calls that entered the queue; answered / abandoned / overflowed partition them.
- short abandons: abandoned within the queue's ``short_abandon_s``; kept apart and excluded from SL.
- P(wait): share of offered calls that found no agent free on arrival (the queue did not reserve an
  agent in the step that enqueued them; Erlang's "probability of waiting", by PASTA).
- SL(T): answered within T / (offered − short abandons).
- ASA: mean wait of answered calls; waits are queue entry to answer, ringing included.
- AHT: talk + hold from the CDR plus the queue's wrap-up, answered calls.
- occupancy: (reserved + on call + wrap-up) / (available + reserved + on call + wrap-up) time.

Theory: a queue is a *textbook case* when its only traffic comes straight from DIDs as one Poisson
stream with a constant rate, exponential handle time, no priority mix, patience none or
exponential, no wrap-up, overflow or relax steps, and it is served by agents who serve nothing else,
are logged in throughout, answer at once and never miss. Then the report shows Erlang C (no
patience) or Erlang A (exponential patience) beside the measurement.
"""

from __future__ import annotations

import html
import json
import math
from typing import TYPE_CHECKING, Any

from engine.fsm.agent import AgentState
from engine.fsm.queue import QueueConfig
from engine.messages import Cdr
from sim.erlang import erlang_a, erlang_c, erlang_c_wait_survival
from sim.recordings import SimRecordings
from sim.scenario import Scenario, expand_agents
from sim.voicemail import SimVoicemail

if TYPE_CHECKING:
    from sim.core import Simulator

__all__ = ["Collector", "build_report", "to_json", "to_html", "PERCENTILES"]

PERCENTILES = (50, 80, 90, 95, 99)
PLOT_BUCKETS = 240
_BUSY = (AgentState.RESERVED, AgentState.ON_CALL, AgentState.WRAP_UP)
_STAFFED = (AgentState.AVAILABLE,) + _BUSY


class _Counts:
    __slots__ = ("offered", "answered", "abandoned", "short_abandoned", "overflowed", "waited",
                 "within", "wait_sum", "wait_all_sum", "max_len", "waits")

    def __init__(self, keep_waits: bool) -> None:
        self.offered = self.answered = self.abandoned = self.short_abandoned = 0
        self.overflowed = self.waited = self.within = 0
        self.wait_sum = self.wait_all_sum = 0.0
        self.max_len = 0
        self.waits: list[float] | None = [] if keep_waits else None


class _QueueStats:
    def __init__(self, cfg: QueueConfig, n_intervals: int, duration: float) -> None:
        self.cfg = cfg
        self.total = _Counts(True)
        self.intervals = [_Counts(False) for _ in range(n_intervals)]
        self.entered: dict[str, tuple[float, bool]] = {}
        self.handle_sum = 0.0
        self.handle_n = 0
        #: per interval (of the call's creation): [handle time sum, answered calls]
        self.iv_handle = [[0.0, 0] for _ in range(n_intervals)]
        self.len_now = 0
        self.len_since = 0.0
        self.len_area = 0.0
        self.bucket_w = duration / PLOT_BUCKETS
        self.buckets = [0] * PLOT_BUCKETS


class Collector:
    """Accumulates measurements during a run (see the module rules for what counts)."""

    def __init__(self, scenario: Scenario) -> None:
        self.sc = scenario
        self.start = scenario.warmup_s
        self.end = scenario.duration_s
        self.n_intervals = max(1, math.ceil(scenario.duration_s / scenario.interval_s))
        self.queues: dict[str, _QueueStats] = {}
        self.agent_time: dict[str, dict[AgentState, float]] = {}
        self.agent_since: dict[str, float] = {}
        self.agent_calls: dict[str, int] = {}
        self.calls_created = 0
        self.cdrs = 0
        self.dispositions: dict[str, int] = {}
        self.dead_letters = 0
        self.fault_rejected = 0
        #: callers still waiting when the drain ended (nobody could serve them)
        self.gave_up_at_end = 0
        self.faults: list[dict[str, Any]] = []
        self.sim_end = 0.0
        self.events = 0
        #: outbound: calls given a dial plan, refusals by reason, per-gateway leg counts
        self.outbound_planned = 0
        self.outbound_refused: dict[str, int] = {}
        self.trunks: dict[str, dict[str, int]] = {}
        self.trunk_failovers = 0
        self.failover_causes: dict[str, int] = {}
        self.trunk_carried: dict[str, int] = {}
        #: parking: counts and time parked (sum/max over calls that left their slot)
        self.parking: dict[str, Any] = {"parked": 0, "timed_out": 0, "fallbacks": 0, "picked_up": {},
                                        "parked_s_sum": 0.0, "parked_s_max": 0.0, "parked_n": 0}
        self._parked_at: dict[str, float] = {}
        #: voicemail: mailboxes fed from VOICEMAIL_* events and the owner's scripted retrievals
        self.voicemail = SimVoicemail()
        #: recordings: counts from the recording CTI events (sim/recordings.py)
        self.recordings = SimRecordings()

    def parking_event(self, name: str, call_id: str, at: float, data: Any) -> None:
        """CALL_PARKED / CALL_PARK_TIMEOUT / CALL_PICKED_UP: parks, timeouts, pickups by kind and
        how long calls stayed parked (until picked up or timed out)."""
        p = self.parking
        if name == "CALL_PARKED":
            p["parked"] += 1
            self._parked_at[call_id] = at
            return
        if name == "CALL_PARK_TIMEOUT":
            if data.get("target") and call_id not in self._parked_at:
                p["fallbacks"] += 1  # the second timeout event: the parker did not answer either
                return
            p["timed_out"] += 1
        else:
            kind = str(data.get("kind") or "slot")
            p["picked_up"][kind] = p["picked_up"].get(kind, 0) + 1
        since = self._parked_at.pop(call_id, None)
        if since is not None:
            p["parked_s_sum"] += at - since
            p["parked_s_max"] = max(p["parked_s_max"], at - since)
            p["parked_n"] += 1

    def trunk_failover(self, cause: str) -> None:
        self.trunk_failovers += 1
        self.failover_causes[cause] = self.failover_causes.get(cause, 0) + 1

    def trunk(self, gateway: str) -> dict[str, int]:
        counts = self.trunks.get(gateway)
        if counts is None:
            counts = self.trunks[gateway] = {"dialled": 0, "answered": 0, "failed": 0, "peak": 0}
        return counts

    def add_queue(self, cfg: QueueConfig) -> None:
        self.queues[cfg.queue_id] = _QueueStats(cfg, self.n_intervals, self.sc.duration_s)

    def add_agent(self, agent_id: str) -> None:
        self.agent_time[agent_id] = {s: 0.0 for s in AgentState}
        self.agent_since[agent_id] = 0.0
        self.agent_calls[agent_id] = 0

    def _overlap(self, a: float, b: float) -> float:
        return max(0.0, min(b, self.end) - max(a, self.start))

    def agent_state(self, agent_id: str, old: AgentState, new: AgentState, t: float) -> None:
        since = self.agent_since[agent_id]
        self.agent_time[agent_id][old] += self._overlap(since, t)
        self.agent_since[agent_id] = t
        if old is AgentState.ON_CALL and self.start <= t:
            self.agent_calls[agent_id] += 1

    def queue_entered(self, queue_id: str, call_id: str, t: float, immediate: bool) -> None:
        self.queues[queue_id].entered[call_id] = (t, immediate)

    def queue_length(self, queue_id: str, t: float, n: int) -> None:
        qs = self.queues[queue_id]
        prev, since = qs.len_now, qs.len_since
        qs.len_area += prev * self._overlap(since, t)
        w = qs.bucket_w
        b0 = min(int(since / w), PLOT_BUCKETS - 1)
        b1 = min(int(t / w), PLOT_BUCKETS - 1)
        buckets = qs.buckets
        if prev:
            for b in range(b0, b1 + 1):
                if buckets[b] < prev:
                    buckets[b] = prev
        if buckets[b1] < n:
            buckets[b1] = n
        if n > prev and self.start <= t < self.end:
            if n > qs.total.max_len:
                qs.total.max_len = n
        if n > prev and t < self.end:
            iv = qs.intervals[int(t // self.sc.interval_s)]
            if n > iv.max_len:
                iv.max_len = n
        qs.len_now, qs.len_since = n, t

    def queue_left(self, queue_id: str, call_id: str, t: float, data: dict[str, Any]) -> None:
        qs = self.queues[queue_id]
        entered = qs.entered.pop(call_id, None)
        if entered is None:
            return
        t0, immediate = entered
        if t0 >= self.end:
            return
        outcome = data.get("outcome")
        wait = t - t0
        cfg = qs.cfg
        iv = qs.intervals[int(t0 // self.sc.interval_s)]
        targets = (iv, qs.total) if t0 >= self.start else (iv,)
        for c in targets:
            c.offered += 1
            c.wait_all_sum += wait
            if not immediate:
                c.waited += 1
            if outcome == "answered":
                c.answered += 1
                c.wait_sum += wait
                if wait <= cfg.sl_threshold_s:
                    c.within += 1
                if c.waits is not None:
                    c.waits.append(wait)
            elif outcome == "abandoned":
                c.abandoned += 1
                if wait < cfg.short_abandon_s:
                    c.short_abandoned += 1
            else:
                c.overflowed += 1

    def cdr(self, cdr: Cdr) -> None:
        self.cdrs += 1
        if cdr.trunk and cdr.disposition == "answered":
            self.trunk_carried[cdr.trunk] = self.trunk_carried.get(cdr.trunk, 0) + 1
        self.dispositions[cdr.disposition] = self.dispositions.get(cdr.disposition, 0) + 1
        if cdr.queue_id and cdr.agent_id and cdr.answered_at is not None and 0.0 <= cdr.created_at < self.end:
            qs = self.queues.get(cdr.queue_id)
            if qs is not None:
                handle = cdr.talk_s + cdr.hold_s + qs.cfg.wrap_up_s
                iv = qs.iv_handle[int(cdr.created_at // self.sc.interval_s)]
                iv[0] += handle
                iv[1] += 1
                if cdr.created_at >= self.start:
                    qs.handle_sum += handle
                    qs.handle_n += 1

    def finish(self, sim: Simulator) -> None:
        self.sim_end = sim.now
        self.events = sim.events
        for agent_id, agent in sim.agents.items():
            self.agent_state(agent_id, agent.state, agent.state, max(sim.now, self.end))
        for qs in self.queues.values():
            qs.len_area += qs.len_now * self._overlap(qs.len_since, self.end)


# ---- the report --------------------------------------------------------------------------------


def _r(x: float | None) -> float | None:
    if x is None or math.isnan(x) or math.isinf(x):
        return None
    return round(x, 6)


def _div(a: float, b: float) -> float | None:
    return a / b if b else None


def _percentile(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * p / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def _merge(into: _Counts, c: _Counts) -> None:
    """Add ``c`` to ``into`` (max queue length: the largest single queue's)."""
    for name in ("offered", "answered", "abandoned", "short_abandoned", "overflowed", "waited", "within"):
        setattr(into, name, getattr(into, name) + getattr(c, name))
    into.wait_sum += c.wait_sum
    into.wait_all_sum += c.wait_all_sum
    into.max_len = max(into.max_len, c.max_len)
    if into.waits is not None and c.waits is not None:
        into.waits.extend(c.waits)


def _figures(c: _Counts, handle: float | None = None, *, with_aht: bool = False) -> dict[str, Any]:
    base = c.offered - c.short_abandoned
    out: dict[str, Any] = {
        "offered": c.offered,
        "answered": c.answered,
        "abandoned": c.abandoned,
        "short_abandoned": c.short_abandoned,
        "overflowed": c.overflowed,
        "abandon_rate": _r(_div(c.abandoned, c.offered)),
        "asa_s": _r(_div(c.wait_sum, c.answered)),
        "sl": _r(_div(c.within, base)),
        "p_wait": _r(_div(c.waited, c.offered)),
        "wait_mean_s": _r(_div(c.wait_all_sum, c.offered)),
    }
    if c.waits is not None:
        waits = sorted(c.waits)
        for p in PERCENTILES:
            out[f"wait_p{p}_s"] = _r(_percentile(waits, p))
    if handle is not None or with_aht:
        out["aht_s"] = _r(handle)
    out["max_queue_length"] = c.max_len
    return out


def textbook(sc: Scenario, queue_id: str) -> dict[str, Any] | None:
    """The Erlang model for ``queue_id`` when it is a textbook case, else None (see module doc)."""
    cfg = next(q for q in sc.queues if q.queue_id == queue_id)
    if cfg.wrap_up_s or cfg.max_wait_s or cfg.max_length or cfg.relax_steps or sc.faults:
        return None
    for flow in sc.flow_map.values():
        if any(getattr(n, "queue", None) == queue_id for n in flow.nodes.values()):
            return None
    dids = {num for num, d in sc.dids.items() if d.queue == queue_id}
    streams = [tr for tr in sc.traffic if tr.did in dids]
    if not streams:
        return None
    handle, patience = streams[0].handle, streams[0].patience
    lam = 0.0
    for tr in streams:
        rates = set(tr.rates_per_hour) if tr.rates_per_hour else {tr.rate_per_hour}
        if len(rates) != 1 or tr.handle != handle or tr.patience != patience or len({p.priority for p in tr.priorities}) > 1:
            return None
        lam += rates.pop() / 3600.0
    if handle.dist != "exponential" or patience.dist not in ("none", "exponential") or lam <= 0:
        return None
    required = {}
    for num in dids:
        required.update(sc.dids[num].skills)
    agents = [a for a in expand_agents(sc) if queue_id in a.queues]
    for a in agents:
        if (a.queues != (queue_id,) or a.login_s > 0 or (a.logout_s is not None and a.logout_s < sc.duration_s)
                or a.no_answer_p or a.answer_delay_s or any(a.skills.get(s, -1) < v for s, v in required.items())):
            return None
    n = len(agents)
    aht = handle.mean_s
    a_load = lam * aht
    if patience.dist == "none":
        fig = erlang_c(a_load, n, aht, cfg.sl_threshold_s)
        return {"model": "erlang_c", "offered_load_erlangs": _r(a_load), "agents": n, "aht_s": _r(aht),
                "sl_threshold_s": cfg.sl_threshold_s, **{k: _r(v) for k, v in fig.items()}}
    fig = erlang_a(lam, aht, n, patience.mean_s)
    return {"model": "erlang_a", "offered_load_erlangs": _r(a_load), "agents": n, "aht_s": _r(aht),
            "mean_patience_s": patience.mean_s, **{k: _r(v) for k, v in fig.items()}}


def build_report(stats: Collector, seed: int) -> dict[str, Any]:
    sc = stats.sc
    window = stats.end - stats.start
    queues: dict[str, Any] = {}
    total = _Counts(True)
    handle_sum, handle_n = 0.0, 0
    total_iv = [_Counts(False) for _ in range(stats.n_intervals)]
    total_iv_handle = [[0.0, 0] for _ in range(stats.n_intervals)]
    for qid, qs in stats.queues.items():
        handle = _div(qs.handle_sum, qs.handle_n)
        fig = _figures(qs.total, handle, with_aht=True)
        fig["mean_queue_length"] = _r(qs.len_area / window)
        intervals = []
        for i, iv in enumerate(qs.intervals):
            h_sum, h_n = qs.iv_handle[i]
            f = _figures(iv, _div(h_sum, h_n), with_aht=True)
            f = {"start_s": i * sc.interval_s, "warmup": i * sc.interval_s < stats.start, **f}
            intervals.append(f)
            _merge(total_iv[i], iv)
            total_iv_handle[i][0] += h_sum
            total_iv_handle[i][1] += h_n
        queues[qid] = {"figures": fig, "theory": textbook(sc, qid), "intervals": intervals,
                       "queue_length_plot": {"bucket_s": _r(qs.bucket_w), "max": qs.buckets}}
        _merge(total, qs.total)
        handle_sum += qs.handle_sum
        handle_n += qs.handle_n
    agents: dict[str, Any] = {}
    for agent_id, times in stats.agent_time.items():
        busy = sum(times[s] for s in _BUSY)
        staffed = sum(times[s] for s in _STAFFED)
        agents[agent_id] = {"occupancy": _r(_div(busy, staffed)), "calls_handled": stats.agent_calls[agent_id],
                            "staffed_s": _r(staffed), "not_ready_s": _r(times[AgentState.NOT_READY])}
    occ = [a["occupancy"] for a in agents.values() if a["occupancy"] is not None]
    total_fig = _figures(total, _div(handle_sum, handle_n), with_aht=True)
    total_fig["mean_occupancy"] = _r(sum(occ) / len(occ)) if occ else None
    return {
        "scenario": sc.name,
        "seed": seed,
        "duration_s": sc.duration_s,
        "warmup_s": sc.warmup_s,
        "interval_s": sc.interval_s,
        "calls": {"created": stats.calls_created, "cdrs": stats.cdrs, "dispositions": dict(sorted(stats.dispositions.items())),
                  "rejected_by_faults": stats.fault_rejected, "gave_up_at_end": stats.gave_up_at_end},
        "events": stats.events,
        "virtual_end_s": _r(stats.sim_end),
        "faults": stats.faults,
        "dead_letters": stats.dead_letters,
        "total": total_fig,
        "total_intervals": [{"start_s": i * sc.interval_s, "warmup": i * sc.interval_s < stats.start,
                             **_figures(c, _div(*total_iv_handle[i]), with_aht=True)} for i, c in enumerate(total_iv)],
        "queues": queues,
        "agents": agents,
        # only scenarios with trunks carry this section (older reports stay byte-identical)
        **({"outbound": {"planned": stats.outbound_planned, "refused": dict(sorted(stats.outbound_refused.items())),
                         "failovers": stats.trunk_failovers,
                         "failover_causes": dict(sorted(stats.failover_causes.items())),
                         "carried_by_trunk": dict(sorted(stats.trunk_carried.items())),
                         "gateways": {g: dict(c) for g, c in sorted(stats.trunks.items())}}}
           if sc.trunks else {}),
        # only runs that parked a call carry this section (older reports stay byte-identical)
        **({"parking": {"parked": stats.parking["parked"], "timed_out": stats.parking["timed_out"],
                        "fallbacks": stats.parking["fallbacks"],
                        "picked_up": dict(sorted(stats.parking["picked_up"].items())),
                        "mean_parked_s": _r(_div(stats.parking["parked_s_sum"], stats.parking["parked_n"])),
                        "max_parked_s": _r(stats.parking["parked_s_max"])}}
           if stats.parking["parked"] or stats.parking["picked_up"] else {}),
        # only runs with recordings carry this section (older reports stay byte-identical)
        **({"recordings": stats.recordings.report()} if stats.recordings.active() else {}),
        # only runs that used a conference room carry this section (older reports stay byte-identical)
        **({"conferences": stats.conferences.report()}
           if getattr(stats, "conferences", None) is not None and stats.conferences.active() else {}),
        # only runs with voicemail carry this section (older reports stay byte-identical)
        **({"voicemail": stats.voicemail.report()} if stats.voicemail.active() else {}),
    }


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=1, allow_nan=False) + "\n"


# ---- HTML --------------------------------------------------------------------------------------

_W, _H, _PAD = 560, 220, 40


def _svg_lines(series: list[tuple[str, str, list[tuple[float, float]]]], x_label: str, y_label: str,
               y_max: float | None = None) -> str:
    xs = [x for _, _, pts in series for x, _ in pts] or [0.0, 1.0]
    ys = [y for _, _, pts in series for _, y in pts] or [0.0, 1.0]
    x0, x1 = min(xs), max(xs) or 1.0
    y1 = y_max if y_max is not None else (max(ys) or 1.0)
    x1 = x1 if x1 > x0 else x0 + 1.0

    def sx(x: float) -> float:
        return _PAD + (x - x0) / (x1 - x0) * (_W - 2 * _PAD)

    def sy(y: float) -> float:
        return _H - _PAD + 10 - (y / y1) * (_H - _PAD - 10)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" font-size="11">',
             f'<line x1="{_PAD}" y1="{sy(0):.1f}" x2="{_W - _PAD}" y2="{sy(0):.1f}" stroke="#999"/>',
             f'<line x1="{_PAD}" y1="{sy(0):.1f}" x2="{_PAD}" y2="{sy(y1):.1f}" stroke="#999"/>',
             f'<text x="{_W / 2:.0f}" y="{_H - 4}" text-anchor="middle">{html.escape(x_label)}</text>',
             f'<text x="4" y="12">{html.escape(y_label)} (max {y1:.3g})</text>',
             f'<text x="{_PAD}" y="{_H - 18}" text-anchor="middle">{x0:.3g}</text>',
             f'<text x="{_W - _PAD}" y="{_H - 18}" text-anchor="middle">{x1:.3g}</text>']
    for i, (name, colour, pts) in enumerate(series):
        if not pts:
            continue
        path = " ".join(f"{sx(x):.1f},{sy(min(y, y1)):.1f}" for x, y in pts)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>')
        parts.append(f'<text x="{_W - _PAD - 150}" y="{20 + 14 * i}" fill="{colour}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _svg_bars(values: list[float | None], target: float | None, label: str) -> str:
    n = max(1, len(values))
    bw = (_W - 2 * _PAD) / n
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" font-size="11">',
             f'<text x="4" y="12">{html.escape(label)}</text>']
    base = _H - _PAD + 10
    span = _H - _PAD - 10
    for i, v in enumerate(values):
        if v is None:
            continue
        h = v * span
        parts.append(f'<rect x="{_PAD + i * bw:.1f}" y="{base - h:.1f}" width="{max(1.0, bw - 1):.1f}" '
                     f'height="{h:.1f}" fill="#4a7ebb"><title>interval {i}: {v:.3f}</title></rect>')
    if target is not None:
        y = base - target * span
        parts.append(f'<line x1="{_PAD}" y1="{y:.1f}" x2="{_W - _PAD}" y2="{y:.1f}" stroke="#c0392b" '
                     f'stroke-dasharray="4 3"/><text x="{_W - _PAD}" y="{y - 3:.1f}" text-anchor="end" '
                     f'fill="#c0392b">theory {target:.3f}</text>')
    parts.append(f'<line x1="{_PAD}" y1="{base}" x2="{_W - _PAD}" y2="{base}" stroke="#999"/></svg>')
    return "".join(parts)


def _table(fig: dict[str, Any], theory: dict[str, Any] | None) -> str:
    rows = []
    for key, value in fig.items():
        th = theory.get(key) if theory else None
        rows.append(f"<tr><td>{html.escape(key)}</td><td>{html.escape(_fmt(value))}</td>"
                    f"<td>{html.escape(_fmt(th)) if th is not None else ''}</td></tr>")
    return ("<table><tr><th>figure</th><th>measured</th><th>theory</th></tr>" + "".join(rows) + "</table>")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)


def _interval_table(intervals: list[dict[str, Any]]) -> str:
    rows = "".join(f"<tr><td>{iv['start_s']:.0f}{' (warm-up)' if iv['warmup'] else ''}</td><td>{iv['offered']}</td>"
                   f"<td>{iv['answered']}</td><td>{iv['abandoned']}</td><td>{_fmt(iv['asa_s'])}</td>"
                   f"<td>{_fmt(iv['sl'])}</td><td>{_fmt(iv['p_wait'])}</td><td>{_fmt(iv.get('aht_s'))}</td>"
                   f"<td>{iv['max_queue_length']}</td></tr>" for iv in intervals)
    return ("<details><summary>per interval</summary><table><tr><th>start s</th><th>offered</th><th>answered</th>"
            f"<th>abandoned</th><th>ASA</th><th>SL</th><th>P(wait)</th><th>AHT</th><th>max len</th></tr>{rows}</table></details>")


def to_html(report: dict[str, Any], waits: dict[str, list[float]] | None = None) -> str:
    """One self-contained page: figures, and per queue the wait-time curve against Erlang, the
    queue length over time and the service level per interval (inline SVG, no scripts)."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>callengine sim: {html.escape(report['scenario'])}</title>",
           "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:.5em 0}"
           "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child{text-align:left}"
           ".plots{display:flex;flex-wrap:wrap;gap:1em}</style></head><body>",
           f"<h1>{html.escape(report['scenario'])} — seed {report['seed']}</h1>",
           f"<p>duration {report['duration_s']} s, warm-up {report['warmup_s']} s, interval {report['interval_s']} s; "
           f"calls created {report['calls']['created']}, events {report['events']}, dead letters {report['dead_letters']}, "
           f"faults {len(report['faults'])}.</p>",
           "<h2>Total</h2>", _table(report["total"], None), _interval_table(report["total_intervals"])]
    for qid, q in report["queues"].items():
        fig, theory = q["figures"], q["theory"]
        out.append(f"<h2>Queue {html.escape(qid)}</h2>")
        if theory:
            out.append(f"<p>Textbook case: {theory['model'].replace('_', ' ').title()} with A = "
                       f"{theory['offered_load_erlangs']} Erlangs, N = {theory['agents']}.</p>")
        out.append(_table(fig, theory))
        plots = []
        qwaits = sorted((waits or {}).get(qid, []))
        if qwaits:
            hi = max(qwaits[int(0.99 * (len(qwaits) - 1))], 1.0) * 1.2
            grid = [hi * i / 80 for i in range(81)]
            n = len(qwaits)
            measured, j = [], 0
            for x in grid:
                while j < n and qwaits[j] <= x:
                    j += 1
                measured.append((x, (n - j) / n))
            series = [("measured P(W > t), answered", "#4a7ebb", measured)]
            if theory and theory["model"] == "erlang_c":
                a, nn, aht = theory["offered_load_erlangs"], theory["agents"], theory["aht_s"]
                series.append(("Erlang C", "#c0392b", [(x, erlang_c_wait_survival(a, nn, aht, x)) for x in grid]))
            plots.append(_svg_lines(series, "wait t (s)", "P(W > t)", 1.0))
        plot = q["queue_length_plot"]
        pts = [(i * plot["bucket_s"], float(v)) for i, v in enumerate(plot["max"])]
        plots.append(_svg_lines([("max queue length", "#27ae60", pts)], "time (s)", "queue length"))
        sl = [iv["sl"] for iv in q["intervals"]]
        plots.append(_svg_bars(sl, theory.get("sl") if theory else None, "service level per interval"))
        out.append("<div class='plots'>" + "".join(plots) + "</div>")
        out.append(_interval_table(q["intervals"]))
    occ = "".join(f"<tr><td>{html.escape(a)}</td><td>{_fmt(v['occupancy'])}</td><td>{v['calls_handled']}</td></tr>"
                  for a, v in report["agents"].items())
    out.append(f"<h2>Agents</h2><details><summary>occupancy per agent</summary><table><tr><th>agent</th>"
               f"<th>occupancy</th><th>calls</th></tr>{occ}</table></details></body></html>\n")
    return "".join(out)
