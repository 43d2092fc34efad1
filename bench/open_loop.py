"""An open loop above a server's capacity shows the queue it builds: latency rises through the run.

    python bench/open_loop.py [--model resnet18] [--overload 3] [--duration 2] [--warmup 0.5] [--rounds 1]

The server runs without batching on one thread (`--max-batch-size 1 --threads 1`), so its capacity is
low; a closed loop at concurrency 1 measures it. An open loop then sends `--overload` times that rate,
each latency counted from the request's intended send time (client/loadtest.py). The queue, and so
the latency, grows by about (overload - 1) s per second of the run, so the last quarter's p50 should
exceed the first's by about 3/4 × (overload - 1) × the duration. Printed per round: the p50 of each
quarter of the open loop's run by send time, the last quarter's over the first's and minus it, the
open loop's p50 over the closed loop's, and its throughput over the capacity (about 1: a queue does
not make the server faster). A timing claim, so it is measured here and not asserted in a test
(tests/test_loadtest.py checks the open loop's schedule and counts).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from common import ROOT

from client.loadtest import Level, Workload, run_level
from client.spawn import SpawnedServer


def shipped_copy(model: str, directory: Path) -> Path:
    """`model`'s version 1 as it ships in model_repository/, copied: the server writes nothing into the checkout."""
    shipped = ROOT / "model_repository" / model
    shutil.copytree(shipped / "1", directory / model / "1")
    for name in ("config.pbtxt", "labels.txt"):
        shutil.copy(shipped / name, directory / model / name)
    return directory


def one_round(target: str, args: argparse.Namespace) -> dict:
    workload = Workload(target=target, model=args.model, warmup_s=args.warmup, duration_s=args.duration,
                        processes=1, timeout_s=60)
    closed = run_level(workload, Level(concurrency=1), live=False)
    capacity = closed["requests_per_s"]
    opened = run_level(workload, Level(rate=args.overload * capacity), live=False)
    quarters = opened["p50_by_quarter_ms"]
    return {"capacity_per_s": capacity, "closed_p50_ms": closed["p50_ms"], "open_rate_per_s": args.overload * capacity,
            "p50_by_quarter_ms": quarters, "last_over_first": quarters[-1] / quarters[0],
            "rising": quarters == sorted(quarters), "last_minus_first_s": (quarters[-1] - quarters[0]) / 1e3,
            "open_over_closed_p50": opened["p50_ms"] / closed["p50_ms"],
            "throughput_over_capacity": opened["requests_per_s"] / capacity,
            "sent": opened["sent"], "failed": opened["failed"], "first_errors": opened["first_errors"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="resnet18", help="a model that ships as ONNX in model_repository/")
    parser.add_argument("--overload", type=float, default=3.0, help="open-loop rate as a multiple of the capacity")
    parser.add_argument("--duration", type=float, default=2.0, help="measured seconds per loop")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each loop")
    parser.add_argument("--rounds", type=int, default=1, help="closed-then-open rounds on the same server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        server = SpawnedServer(shipped_copy(args.model, Path(directory)),
                               # no limit on the queue or on the calls in flight: the queue is what is measured
                               ["--models", args.model, "--max-batch-size", "1", "--threads", "1",
                                "--max-queue-images", "100000", "--max-concurrent-rpcs", "100000"],
                               log_path=Path(directory) / "server.log")
        try:
            rounds = [one_round(server.target, args) for _ in range(args.rounds)]
        finally:
            server.stop()
    print(f"{args.model}, no batching, 1 thread; open loop at {args.overload:g} × the closed loop's capacity, "
          f"{args.duration:g} s measured")
    for i, r in enumerate(rounds, 1):
        quarters = " ".join(f"{q:.1f}" for q in r["p50_by_quarter_ms"])
        print(f"round {i}: capacity {r['capacity_per_s']:.1f} req/s (closed p50 {r['closed_p50_ms']:.1f} ms); "
              f"open at {r['open_rate_per_s']:.1f} req/s: p50 per quarter {quarters} ms, "
              f"last/first ×{r['last_over_first']:.1f} (+{r['last_minus_first_s']:.2f} s, "
              f"{'rising' if r['rising'] else 'NOT rising'}), open/closed p50 ×{r['open_over_closed_p50']:.1f}, "
              f"throughput/capacity ×{r['throughput_over_capacity']:.2f}, {r['sent']} sent, failed {r['failed'] or 0}")
        for code, message in r["first_errors"].items():
            print(f"  first {code}: {message}")


if __name__ == "__main__":
    main()
