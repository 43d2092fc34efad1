"""Load generator for a cnnserve server.

    python -m server.loadtest --spawn-server model_repository --model lenet --concurrency 1,4,16,64
    python -m server.loadtest --target 127.0.0.1:50051 --model resnet18 --rate 200 --duration 10

Closed loop (`--concurrency`): each of C callers sends its next request when the previous one
answers. Open loop (`--rate`): requests leave at Poisson-distributed times whatever the server
does, and each latency is measured from the request's intended send time, so a server that
falls behind shows it (no coordinated omission). Callers are spread over `--processes` client
processes (asyncio gRPC in each) so the client is not the bottleneck.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import json
import multiprocessing
import queue
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from server.app import message_limits
from server.proto import classifier_pb2 as pb
from server.proto import classifier_pb2_grpc

START_MARGIN_S = 0.5   # processes start their clock together this long after the parent says go


@dataclass(frozen=True)
class Level:
    """One load level: a closed-loop concurrency or an open-loop rate (requests/s), not both."""
    concurrency: int = 0
    rate: float = 0.0

    def __str__(self) -> str:
        return f"concurrency {self.concurrency}" if self.concurrency else f"rate {self.rate:g}/s"


@dataclass(frozen=True)
class Workload:
    target: str
    model: str
    batch: int = 1
    features: tuple[str, ...] = ()
    warmup_s: float = 2.0
    duration_s: float = 10.0
    timeout_s: float = 10.0
    processes: int = 2
    max_message_mb: int = 64
    seed: int = 0


def build_request(workload: Workload, seed: int) -> pb.ClassifyRequest:
    rng = np.random.default_rng(seed)
    images = [pb.Image(tensor=pb.Tensor(shape=[28, 28], dtype="uint8",
                                        data=rng.integers(0, 256, (28, 28), dtype=np.uint8).tobytes()))
              for _ in range(workload.batch)]
    return pb.ClassifyRequest(model=workload.model, images=images, features=list(workload.features))


async def _drive(workload: Workload, level: Level, share: float, start_at: float, index: int,
                 progress) -> list[tuple[float, float, str]]:
    """Run this process's share of a level; return (intended send time, latency s, status) per measured request."""
    request = build_request(workload, workload.seed + index)
    measure_from = start_at + workload.warmup_s
    end = measure_from + workload.duration_s
    records: list[tuple[float, float, str]] = []
    async with grpc.aio.insecure_channel(workload.target, options=message_limits(workload.max_message_mb)) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)

        async def call(intended: float) -> None:
            try:
                await stub.Classify(request, timeout=workload.timeout_s)
                code = "OK"
            except grpc.aio.AioRpcError as error:
                code = error.code().name
            if intended >= measure_from:
                records.append((intended, time.time() - intended, code))
                with progress.get_lock():
                    progress.value += 1

        await asyncio.sleep(max(0.0, start_at - time.time()))
        if level.concurrency:
            async def caller() -> None:
                while (now := time.time()) < end:
                    await call(now)
            await asyncio.gather(*(caller() for _ in range(round(share))))
        else:
            rng = random.Random(workload.seed * 1000 + index)
            intended, pending = time.time(), []
            while intended < end:
                await asyncio.sleep(max(0.0, intended - time.time()))
                pending.append(asyncio.ensure_future(call(intended)))
                intended += rng.expovariate(share)
            await asyncio.gather(*pending)
    return records


def _process_main(workload, level, share, start_at, index, progress, results) -> None:
    results.put(asyncio.run(_drive(workload, level, share, start_at, index, progress)))


def split(total: float, parts: int, integer: bool) -> list[float]:
    if integer:
        return [n for n in (int(total) // parts + (i < int(total) % parts) for i in range(parts)) if n]
    return [total / parts] * parts


def run_level(workload: Workload, level: Level, live: bool = True) -> dict:
    context = multiprocessing.get_context("spawn")
    shares = split(level.concurrency or level.rate, workload.processes, integer=bool(level.concurrency))
    progress, results = context.Value("l", 0), context.Queue()
    start_at = time.time() + START_MARGIN_S + 1.5   # time for the spawned processes to import
    processes = [context.Process(target=_process_main, args=(workload, level, share, start_at, i, progress, results),
                                 daemon=True) for i, share in enumerate(shares)]
    for p in processes:
        p.start()
    records, finished = [], 0
    while finished < len(processes):
        try:
            records += results.get(timeout=0.5)
            finished += 1
        except queue.Empty:
            pass   # nothing finished yet: refresh the progress line
        if live:
            elapsed = time.time() - start_at
            phase = "warm-up" if elapsed < workload.warmup_s else f"{min(elapsed - workload.warmup_s, workload.duration_s):4.1f}/{workload.duration_s:g} s"
            print(f"\r  {level}: {phase}, {progress.value} measured requests", end="", file=sys.stderr, flush=True)
    for p in processes:
        p.join()
    if live:
        print(file=sys.stderr)
    return summarise(workload, level, records)


def summarise(workload: Workload, level: Level, records: list[tuple[float, float, str]]) -> dict:
    codes = Counter(code for _, _, code in records)
    latencies = np.array([lat for _, lat, code in sorted(records) if code == "OK"]) * 1e3
    # Throughput counts completions over the time they took: from the start of measurement to the
    # last answer. In an overloaded open loop that is longer than --duration, as it should be.
    measure_from = min((t for t, _, _ in records), default=0.0)
    elapsed = max([workload.duration_s, *(t + lat - measure_from for t, lat, _ in records)])
    pct = (lambda q: float(np.percentile(latencies, q))) if len(latencies) else (lambda q: float("nan"))
    quarters = np.array_split(latencies, 4) if len(latencies) >= 4 else []
    return {
        "mode": "closed" if level.concurrency else "open", "concurrency": level.concurrency, "rate": level.rate,
        "model": workload.model, "batch": workload.batch, "features": list(workload.features),
        "duration_s": workload.duration_s, "elapsed_s": elapsed, "sent": len(records), "ok": codes.pop("OK", 0),
        "failed": dict(codes), "requests_per_s": len(latencies) / elapsed,
        "images_per_s": len(latencies) * workload.batch / elapsed,
        "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "p999_ms": pct(99.9),
        "max_ms": float(latencies.max()) if len(latencies) else float("nan"),
        # p50 of each quarter of the run, by send time: rising numbers mean a growing queue.
        "p50_by_quarter_ms": [float(np.percentile(q, 50)) for q in quarters],
    }


def print_table(rows: list[dict]) -> None:
    print(f"{'level':>14} {'sent':>7} {'ok':>7} {'failed':>12} {'req/s':>9} {'img/s':>9} "
          f"{'p50':>8} {'p90':>8} {'p99':>8} {'p99.9':>8} {'max':>8}  (ms)")
    for r in rows:
        level = f"c={r['concurrency']}" if r["mode"] == "closed" else f"rate={r['rate']:g}"
        failed = ",".join(f"{k}:{v}" for k, v in r["failed"].items()) or "0"
        print(f"{level:>14} {r['sent']:>7} {r['ok']:>7} {failed:>12} {r['requests_per_s']:>9.1f} {r['images_per_s']:>9.1f} "
              f"{r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['p999_ms']:>8.2f} {r['max_ms']:>8.2f}")


def write_outputs(rows: list[dict], json_path: Path | None, csv_path: Path | None) -> None:
    if json_path:
        json_path.write_text(json.dumps(rows, indent=2))
    if csv_path:
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "p50_by_quarter_ms"], extrasaction="ignore")
            writer.writeheader()
            writer.writerows({**r, "failed": json.dumps(r["failed"]), "features": ",".join(r["features"])} for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.loadtest", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--target", default="127.0.0.1:50051", help="host:port of a running server")
    where.add_argument("--spawn-server", metavar="REPOSITORY", type=Path,
                       help="start `python -m server` on this repository for the run, then stop it")
    parser.add_argument("--server-args", default="", help="extra arguments for the spawned server")
    parser.add_argument("--model", required=True)
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--concurrency", default="1,4,16,64", help="closed loop: comma-separated levels")
    load.add_argument("--rate", type=float, help="open loop: requests/s with Poisson arrivals")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level")
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--batch", type=int, default=1, help="images per request")
    parser.add_argument("--features", default="", help="feature maps per request: name,name or all")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument("--csv", type=Path, help="write the results here as CSV")
    args = parser.parse_args(argv)

    levels = [Level(rate=args.rate)] if args.rate else [Level(concurrency=int(c)) for c in args.concurrency.split(",")]
    spawned = None
    if args.spawn_server:
        from server.spawn import SpawnedServer
        spawned = SpawnedServer(args.spawn_server, args.server_args.split())
    target = spawned.target if spawned else args.target
    features = tuple(["all"] if args.features == "all" else [f for f in args.features.split(",") if f])
    workload = Workload(target=target, model=args.model, batch=args.batch, features=features,
                        warmup_s=args.warmup, duration_s=args.duration, timeout_s=args.timeout,
                        processes=args.processes)
    try:
        rows = []
        for level in levels:
            rows.append(run_level(workload, level))
        print_table(rows)
        write_outputs(rows, args.json, args.csv)
    finally:
        if spawned:
            spawned.stop()
    return 0 if all(not r["failed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
