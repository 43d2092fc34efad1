"""Two servers side by side (two settings, or two checkouts): the same h2load load on each, interleaved rounds.

    python bench/side_by_side.py --a "--workers 2 --threads 2" --b "--workers 2" \
        --model resnet18 --concurrency 32 [--rounds 4] [--duration 8]
    python bench/side_by_side.py --a-root DIR --concurrency 16 --streams 16   # DIR: another checkout, against this one

For a question about one server flag (is `--workers 2` better with ONNX Runtime's two threads per
worker, or with the cores split between the workers?) or one change (`--a-root`: side A runs that
checkout's server): both servers start at once and stay up, and the rounds alternate which one
goes first, so the machine's changing load falls on both.
Prints every run and, per side, the median and the range of requests/s, images/s and p99; writes
bench/results/side-by-side-<label>.json. Needs h2load (`apt-get install nghttp2-client`).
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

import h2load
from common import write_json

from client.spawn import SpawnedServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", default="", help="`python -m server` arguments of side A")
    parser.add_argument("--b", default="", help="... of side B")
    parser.add_argument("--a-root", type=Path, help="side A runs the server of this checkout (default: this one)")
    parser.add_argument("--model", default="lenet_bn")
    parser.add_argument("--api", choices=["cnnserve", "kserve"], default="cnnserve")
    parser.add_argument("--images", type=int, default=1, help="images per request")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--streams", type=int, default=1, help="streams per connection (connections = concurrency / this)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per h2load run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--label", default="main")
    args = parser.parse_args()
    sides = {"A": args.a, "B": args.b}
    roots = {"A": args.a_root, "B": None}
    servers = {name: SpawnedServer(None, ["--models", args.model, *shlex.split(flags)], command=server_command(roots[name]))
               for name, flags in sides.items()}
    runs: dict[str, list[h2load.Measurement]] = {name: [] for name in sides}
    try:
        for round_index in range(args.rounds):
            for name in sides if round_index % 2 == 0 else reversed(sides):
                server = servers[name]
                ep = h2load.endpoint(name, args.api, server.target, args.model, args.images, pid=server.process.pid)
                m = h2load.measure(ep, args.concurrency, args.duration, args.warmup, args.streams)
                runs[name].append(m)
                print(f"  round {round_index + 1}/{args.rounds} {name} ({describe(sides[name], roots[name])}): "
                      f"{m.requests_per_s:,.0f} req/s, {m.images_per_s:,.0f} img/s, p50 {m.p50_ms:.2f} ms, "
                      f"p99 {m.p99_ms:.2f} ms, batch {m.mean_batch or 0:.2f}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    print(f"\n{args.model}, {args.api}, {args.images} image(s)/request, concurrency {args.concurrency} "
          f"({args.streams} stream(s) per connection): median (min-max) of {args.rounds} interleaved rounds of "
          f"{args.duration:g} s")
    for name, flags in sides.items():
        columns = []
        for what, values in (("img/s", [m.images_per_s for m in runs[name]]), ("p99 ms", [m.p99_ms for m in runs[name]])):
            columns.append(f"{what} {statistics.median(values):,.1f} ({min(values):,.1f}-{max(values):,.1f})")
        print(f"  {name} {describe(flags, roots[name])}: " + ", ".join(columns))
    write_json(f"side-by-side-{args.label}", {"args": {**vars(args), "a_root": str(args.a_root or "")},
                                              "runs": {n: [m.row() for m in r] for n, r in runs.items()}})


def server_command(root: Path | None) -> list[str] | None:
    """`python -m server` of another checkout (None: this one's)."""
    if root is None:
        return None
    return [sys.executable, "-c", f"import runpy, sys; sys.path.insert(0, {str(root.resolve())!r}); "
            "runpy.run_module('server', run_name='__main__', alter_sys=True)"]


def describe(flags: str, root: Path | None) -> str:
    return f"`{flags or 'defaults'}`" + (f" of {root}" if root else "")


if __name__ == "__main__":
    main()
