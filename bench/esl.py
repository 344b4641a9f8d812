"""Benchmark: ESL event-frame parsing throughput of adapters.freeswitch.codec.

Rules: single process, single core, bounded wall time (``--seconds``, default 3). Output is human
lines and, as the LAST line, one JSON object whose key ``esl_parse_events_per_s`` is the figure.

Theory: every event frame (text/event-plain|json|xml) of the real FreeSWITCH captures is extracted
once, concatenated into one stream, and fed to a fresh :class:`EslParser` per pass. The headline
figure ``esl_parse_events_per_s`` counts an event as parsed when its frame has been cut out of the
stream, its payload checked, and EVERY header split into a dict and URL-decoded (``ev.headers``:
plain events go through the codec's one-pass C split, json/xml are decoded in full). Two extras:
``esl_parse_raw_split_events_per_s`` (``raw_headers``: every header split, values left
URL-encoded, which is what a consumer of raw values pays) and
``esl_parse_lazy_events_per_s`` (framing + payload check + ``name`` only: the inner headers are
never split, which is what the engine's own hot path does, reading a handful of headers with
``ev.get``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.freeswitch.codec import EslParser  # noqa: E402


def _shared() -> Path | None:
    for cand in (ROOT.parent / "shared", Path(os.environ.get("CALLENGINE_SHARED", "/nonexistent"))):
        if (cand / "esl" / "captures").is_dir():
            return cand
    return None


def load_event_stream(shared: Path) -> tuple[bytes, int]:
    caps = shared / "esl" / "captures"
    files = sorted(caps.glob("*.txt")) + sorted((caps / "fs-1.10.12").glob("[0-9]*.txt"))
    chunks: list[bytes] = []
    for f in files:
        if f.name.endswith(".sent.txt"):
            continue
        data = f.read_bytes().split(b"\n", 1)[1]
        p = EslParser(eager_events=True)
        p.receive_data(data)
        p.receive_data(b"")
        try:
            while True:
                before = len(data) - p.buffered
                fr = p.next_frame()
                if fr is None:
                    break
                after = len(data) - p.buffered
                if fr.event is not None and fr.content_type != "command/reply":
                    chunks.append(data[before:after])
        except ValueError:
            continue  # edited / body-only captures are not wire streams
    return b"".join(chunks), len(chunks)


def run(stream: bytes, count: int, seconds: float, mode: str) -> tuple[int, float]:
    """``mode``: "headers" (split + decode all), "raw" (eager split, raw values), "lazy"."""
    events = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        p = EslParser()
        p.receive_data(stream)
        n = 0
        for fr in p:
            ev = fr.event
            if ev is not None:
                ev.name  # noqa: B018 - the read is the work being measured
                if mode == "headers":
                    ev.headers  # noqa: B018
                elif mode == "raw":
                    ev.raw_headers  # noqa: B018
                n += 1
        assert n == count, (n, count)
        events += n
        if time.perf_counter() >= deadline:
            break
    return events, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args(argv)
    shared = _shared()
    if shared is None:
        print("shared/esl/captures not found (set CALLENGINE_SHARED)")
        print(json.dumps({"esl_parse_events_per_s": None, "error": "no captures"}))
        return 1
    stream, count = load_event_stream(shared)
    print(f"event frames: {count} ({len(stream) / 1e6:.2f} MB per pass)")
    events, elapsed = run(stream, count, args.seconds, "headers")
    rate = events / elapsed
    print(f"parse + split + URL-decode every header (ev.headers): {events} events in "
          f"{elapsed:.2f} s = {rate:,.0f} events/s, "
          f"{len(stream) * events / count / elapsed / 1e6:.0f} MB/s")
    short = min(args.seconds, 1.0)
    events_r, elapsed_r = run(stream, count, short, "raw")
    rate_r = events_r / elapsed_r
    print(f"parse + split, raw URL-encoded values (raw_headers): {rate_r:,.0f} events/s")
    events_l, elapsed_l = run(stream, count, short, "lazy")
    rate_l = events_l / elapsed_l
    print(f"parse, lazy headers (framing + payload check + Event-Name only): "
          f"{rate_l:,.0f} events/s")
    print(json.dumps({"esl_parse_events_per_s": round(rate),
                      "esl_parse_raw_split_events_per_s": round(rate_r),
                      "esl_parse_lazy_events_per_s": round(rate_l),
                      "event_frames_per_pass": count}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
