"""Garbage-collection pauses in a loaded server, with and without the start-up freeze (`server/app.py`).

    python bench/gc_pauses.py [--model lenet_bn] [--concurrency 16] [--duration 10]

Runs the server twice, one after the other: once as it is, once with `gc.freeze()` made a no-op.
Inside each, `gc.callbacks` time every collection; h2load drives it for `--duration` seconds, and
the collections that happened during the load are summarized per generation (count, mean, longest).
A collection stops the event loop, so the longest one is the longest stall every request in flight
shares. Needs h2load (`apt-get install nghttp2-client`).
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import h2load
from common import write_json

from client.spawn import SpawnedServer


def serve_timed(events_file: Path, freeze: bool, server_args: list[str]) -> None:
    """In the server's process: time each collection, run the server until SIGTERM, write the times."""
    events, started = [], {}

    def timed(phase: str, info: dict) -> None:
        if phase == "start":
            started["at"] = time.perf_counter()
        else:
            events.append((time.time(), info["generation"], time.perf_counter() - started["at"]))

    gc.callbacks.append(timed)
    if not freeze:
        gc.freeze = lambda: None      # the server's start-up freeze, left out
    from server.__main__ import main
    try:
        main(server_args)
    finally:
        events_file.write_text(json.dumps(events))


def measure(freeze: bool, args, tmp: Path) -> dict:
    events_file = tmp / f"events-{freeze}.json"
    server = SpawnedServer(None, ["--models", args.model],
                           command=[sys.executable, __file__, "--serve", str(events_file), str(int(freeze)), "--"])
    try:
        ep = h2load.endpoint("server", "cnnserve", server.target, args.model, pid=server.process.pid)
        start = time.time()
        m = h2load.measure(ep, args.concurrency, args.duration, warmup_s=2)
        window = (start, time.time())
    finally:
        server.stop(60)
    events = [e for e in json.loads(events_file.read_text()) if window[0] <= e[0] <= window[1]]
    summary = {"requests_per_s": m.requests_per_s, "p99_ms": m.p99_ms, "seconds": window[1] - window[0]}
    for generation in (0, 1, 2):
        pauses = [seconds for _, g, seconds in events if g == generation]
        summary[f"gen{generation}"] = {"count": len(pauses), "mean_ms": 1e3 * sum(pauses) / max(len(pauses), 1),
                                       "max_ms": 1e3 * max(pauses, default=0.0)}
    return summary


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve_timed(Path(sys.argv[2]), sys.argv[3] == "1", sys.argv[5:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet_bn")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of h2load (after 2 s of warm-up)")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for freeze in (False, True):
            results["with freeze" if freeze else "without freeze"] = measure(freeze, args, Path(tmp))
    print(f"{args.model}, concurrency {args.concurrency}: garbage collections during {args.duration:g} s of h2load")
    for name, s in results.items():
        gens = "; ".join(f"gen{g}: {s[f'gen{g}']['count']} x {s[f'gen{g}']['mean_ms']:.2f} ms "
                         f"(longest {s[f'gen{g}']['max_ms']:.2f})" for g in (0, 1, 2))
        print(f"  {name}: {gens}; {s['requests_per_s']:,.0f} req/s, p99 {s['p99_ms']:.2f} ms")
    write_json("gc-pauses", {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()
