"""Erlang C (M/M/N) and Erlang A (M/M/N+M): the textbook figures the simulator must agree with.

Rules: pure functions of the offered load; formulas and worked examples are in
``/work/shared/queueing.md`` (A = λ·AHT Erlangs, N agents, T the service-level threshold, θ = 1 /
mean patience). Erlang A sums the birth-death chain until terms fall below 1e-15.
"""

from __future__ import annotations

import math

__all__ = ["erlang_b", "erlang_c", "erlang_a", "erlang_c_wait_survival"]


def erlang_b(a: float, n: int) -> float:
    b = 1.0
    for k in range(1, n + 1):
        b = a * b / (k + a * b)
    return b


def erlang_c(a: float, n: int, aht: float, t: float) -> dict[str, float]:
    """P(wait), SL(T), ASA (over all calls), Lq and occupancy for M/M/N; N must exceed A."""
    if n <= a:
        return {"p_wait": 1.0, "sl": 0.0, "asa_s": math.inf, "lq": math.inf, "occupancy": 1.0}
    b = erlang_b(a, n)
    c = n * b / (n - a * (1.0 - b))
    return {
        "p_wait": c,
        "sl": 1.0 - c * math.exp(-(n - a) * t / aht),
        "asa_s": c * aht / (n - a),
        "lq": c * a / (n - a),
        "occupancy": a / n,
    }


def erlang_c_wait_survival(a: float, n: int, aht: float, t: float) -> float:
    """P(W > t) for M/M/N (all calls)."""
    if n <= a:
        return 1.0
    return erlang_c(a, n, aht, 0.0)["p_wait"] * math.exp(-(n - a) * t / aht)


def erlang_a(lam: float, aht: float, n: int, patience: float) -> dict[str, float]:
    """P(wait), P(abandon) and E[Q] for M/M/N+M (Palm; Garnett, Mandelbaum & Reiman 2002)."""
    mu = 1.0 / aht
    theta = 1.0 / patience
    a = lam / mu
    # unnormalised π_j, j <= N, in log space for stability, then the tail k >= 1
    logs = [j * math.log(a) - math.lgamma(j + 1) for j in range(n + 1)]
    top = max(logs)
    head = [math.exp(x - top) for x in logs]
    pi_n = head[-1]
    tail_sum = 0.0
    tail_q = 0.0
    term = pi_n
    k = 0
    while True:
        k += 1
        term *= lam / (n * mu + k * theta)
        tail_sum += term
        tail_q += k * term
        if term < 1e-15 * pi_n and k > 10:
            break
    z = sum(head) + tail_sum
    p_wait = (pi_n + tail_sum) / z
    eq = tail_q / z
    return {"p_wait": p_wait, "p_abandon": theta * eq / lam, "lq": eq}
