"""A new model version rolled out under load: how long from a complete version directory to its first answer,
and what the swap does to the latency of the callers meanwhile.

    python bench/model_rollout.py [--model lenet_bn] [--callers 16] [--duration 4] [--rounds 3] [--poll 0.5]

One server in poll mode (`--repository-poll-secs`), serving a copy of the model's shipped version 1. Each round
runs the callers (client/callers.py: half cnnserve.v1, half KServe v2 gRPC, closed loop) twice for `--duration`
seconds each, interleaved: once steady, once while a new version appears a third of the way in (a copy of the
version serving, built beforehand under a hidden name and renamed into place, as `python -m export.onnx` writes
one). Printed per round: the time from the rename to the first answer from the new version (the wait for the
next poll, then loading, checking and warming it up, then the swap), the p99 latency of the steady run, the p99
of the requests sent during the swap (from the rename until a second after that first answer, which covers the
load, the swap and the old version's drain) and of the whole run with the swap, each over the steady p99, and the
failed requests (there must be none). Target: p99 during the swap at most 2x the steady p99. The first half
second of each run is left out (connections and the batcher settling).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, write_json

from client.callers import Answer, Callers
from client.spawn import SpawnedServer

SETTLE_S = 0.5          # each run's first answers are not counted
AFTER_SWAP_S = 1.0      # the swap window ends this long after the new version's first answer


def p99_ms(answers: list[Answer]) -> float:
    return float(np.percentile([a.latency_s for a in answers], 99)) * 1e3 if answers else float("nan")


def run(server: SpawnedServer, args: argparse.Namespace, rename: tuple[Path, Path] | None = None) -> dict:
    """Callers for `--duration` s; with `rename` (staging, final), the new version appears a third of the way in."""
    callers = Callers(server.target, args.model, args.callers).start(first_answers=args.callers)
    started, appeared, first = time.monotonic(), None, None
    if rename:
        time.sleep(args.duration / 3)
        rename[0].rename(rename[1])
        appeared = time.monotonic()
        version = int(rename[1].name)
        while (first := callers.first(version)) is None and time.monotonic() - appeared < 60:
            time.sleep(0.005)
    time.sleep(max(started + args.duration - time.monotonic(), 0))
    answers = [a for a in callers.stop() if a.sent >= started + SETTLE_S]
    result = {"answers": len(answers), "failed": sum(1 for a in answers if a.error), "p99_ms": p99_ms(answers),
              "errors": sorted({a.error for a in answers if a.error})[:3]}
    if rename:
        if first is None:
            raise SystemExit(f"version {rename[1].name} never answered within 60 s:\n{server.log()[-3000:]}")
        window = [a for a in answers if appeared <= a.sent <= first.answered + AFTER_SWAP_S]
        result.update(first_answer_s=first.answered - appeared, swap_p99_ms=p99_ms(window), swap_answers=len(window))
    return result


def one_round(server: SpawnedServer, model_dir: Path, args: argparse.Namespace) -> dict:
    newest = max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    staging = model_dir / f".staging-{newest + 1}"
    shutil.copytree(model_dir / str(newest), staging)      # before the run: only the rename happens under load
    steady = run(server, args)
    swapped = run(server, args, (staging, model_dir / str(newest + 1)))
    return {"version": newest + 1, "first_answer_s": swapped["first_answer_s"], "steady_p99_ms": steady["p99_ms"],
            "swap_p99_ms": swapped["swap_p99_ms"], "swap_over_steady": swapped["swap_p99_ms"] / steady["p99_ms"],
            "run_with_swap_over_steady": swapped["p99_ms"] / steady["p99_ms"], "swap_answers": swapped["swap_answers"],
            "failed": steady["failed"] + swapped["failed"], "errors": steady["errors"] + swapped["errors"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet_bn", help="a model built in model_repository/")
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run (two runs a round)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--poll", type=float, default=0.5, help="the server's --repository-poll-secs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="model-rollout-") as directory:
        repository, shipped = Path(directory) / "repository", ROOT / "model_repository" / args.model
        shutil.copytree(shipped / "1", repository / args.model / "1")
        for name in ("config.pbtxt", "labels.txt"):
            shutil.copy(shipped / name, repository / args.model / name)
        server = SpawnedServer(repository, ["--model-control-mode", "poll", "--repository-poll-secs", str(args.poll)],
                               log_path=Path(directory) / "server.log")
        try:
            print(f"{args.model}, {args.callers} callers, {args.duration:g} s runs, poll every {args.poll:g} s")
            print(f"{'round':>5} {'first answer':>12} {'steady p99':>10} {'swap p99':>9} {'swap/steady':>11} "
                  f"{'run/steady':>10} {'failed':>6}")
            rows = []
            for index in range(args.rounds):
                row = one_round(server, repository / args.model, args)
                rows.append(row)
                print(f"{index + 1:>5} {row['first_answer_s']:>11.2f}s {row['steady_p99_ms']:>8.1f}ms "
                      f"{row['swap_p99_ms']:>7.1f}ms {row['swap_over_steady']:>10.2f}x "
                      f"{row['run_with_swap_over_steady']:>9.2f}x {row['failed']:>6}", flush=True)
        finally:
            server.stop()
    median = lambda key: statistics.median(row[key] for row in rows)
    summary = {"first_answer_s": median("first_answer_s"), "swap_over_steady": median("swap_over_steady"),
               "failed": sum(row["failed"] for row in rows)}
    print(f"median: first answer {summary['first_answer_s']:.2f} s after the version appeared (poll every "
          f"{args.poll:g} s); p99 during the swap {summary['swap_over_steady']:.2f}x the steady p99 (target <= 2x); "
          f"{summary['failed']} failed requests")
    write_json("model_rollout", {"args": vars(args), "rounds": rows, "summary": summary})


if __name__ == "__main__":
    main()
