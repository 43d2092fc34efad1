"""The serving targets (listed below) under h2load: cnnserve against bare gRPC echoes and in-process ONNX Runtime.

    python bench/serving.py [--runs 3] [--duration 10] [--label main]
    python bench/serving.py --server-root DIR --label before     # DIR: another checkout, whose server runs
    python bench/serving.py --workers 2 --label workers2     # cnnserve --workers 2 against 2-process echoes

One run starts a cnnserve server (the shipped `lenet_bn` and `resnet18`), a bare grpcio echo
(`bench/echo_server.py`, sync) and a bare grpc.aio echo (`bench/echo_aio_server.py`), then drives
each with h2load (`bench/h2load.py`: pre-built gRPC frames, answers checked with grpcio first) in
interleaved rounds, and runs ONNX Runtime in-process with the server's own session options. The
median over the rounds of each measurement is what the targets are judged on:

  1. lenet_bn, 1 image per request, concurrency 16: requests/s >= 0.7 x the faster echo's, and
     p99 <= 2 x that echo's p99 (the echo carries the same request bytes);
  2. mean batch (KServe ModelStatistics over the run) >= 4 at concurrency 16, >= 16 at 64; and the
     same at concurrency 16 when all 16 calls share one connection, as one gRPC channel's calls do
     (mean batch >= 4, requests/s >= 0.9 x the 16 connections'); a batcher that counted connections
     as its company ran batches of one there;
  3. requests/s does not fall as concurrency rises from 1 to 64: each level >= 0.9 x the best lower one;
  4. 64 images per request, concurrency 4: images/s >= 0.7 x in-process ORT at batch 64, judged for
     each way a client can send them: cnnserve.v1 with 64 image messages, cnnserve.v1 with one
     `batch` tensor, KServe v2 gRPC with one tensor;
  5. resnet18, 1 image per request, concurrency 32: images/s >= 0.9 x in-process ORT at the batch size
     the batcher formed; at concurrency 1, server-added p50 (p50 - in-process batch-1 p50) <= 1.25 x
     the echo's p50.

Prints the measurements and a PASS/MISS line per target (a miss says by how much), and writes
bench/results/serving-<label>.json and .md. Needs h2load (`apt-get install nghttp2-client`).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import h2load
import onnxruntime
from common import RESULTS, ROOT, server_root, start_echo, write_json

SERVER_ROOT = server_root()
sys.path.insert(0, str(SERVER_ROOT))

from client.spawn import SpawnedServer  # noqa: E402
from server.runtime import ModelRuntime, RuntimeOptions  # noqa: E402

LENET, RESNET = "lenet_bn", "resnet18"
ECHO_RATIO, ECHO_P99, BATCH_C16, BATCH_C64, NO_FALL, BIG_RATIO, RESNET_RATIO, ADDED_P50 = \
    0.7, 2.0, 4.0, 16.0, 0.9, 0.7, 0.9, 1.25
ONE_CONNECTION = "lenet_bn 1 connection"      # concurrency 16 as 16 streams on one connection
BIG_REQUESTS = {"lenet_bn x64": "cnnserve.v1, 64 image messages", "lenet_bn x64 batch": "cnnserve.v1, one batch tensor",
                "lenet_bn x64 kserve": "KServe v2, one tensor"}     # the 64-image cases, each judged


@dataclass(frozen=True)
class Case:
    key: str
    endpoint: h2load.Endpoint
    levels: tuple[int, ...]
    one_connection: bool = False     # all of a level's calls as streams of one connection (else --streams each)


@dataclass
class Target:
    name: str
    measured: float
    bound: float
    at_least: bool          # measured >= bound passes; else measured <= bound passes
    unit: str = ""

    @property
    def ratio(self) -> float:
        return self.measured / self.bound

    @property
    def passed(self) -> bool:
        return self.measured >= self.bound if self.at_least else self.measured <= self.bound

    suspect: str = ""       # why the measurement cannot be trusted (a busy machine), if it cannot

    @property
    def verdict(self) -> str:
        if self.suspect:
            return f"NOT JUDGED: {self.suspect}"
        if self.passed:
            return "PASS"
        if self.at_least:
            return f"MISS by {1 - self.ratio:.0%}: needs {self.bound / max(self.measured, 1e-9):.2f}x more"
        return f"MISS by {self.ratio - 1:.0%}: {self.ratio:.2f}x the limit"


def in_process(runtime: ModelRuntime, batch: int, seconds: float = 3.0) -> tuple[float, float]:
    """ONNX Runtime alone on `batch` real images: (images/s, p50 ms), median over `seconds` of back-to-back runs."""
    pixels, _, _ = h2load.example_images(batch)
    images = pixels[:, None]
    for _ in range(5):
        runtime.run(images, ["logits"])
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 20:
        t = time.perf_counter()
        runtime.run(images, ["logits"])
        times.append(time.perf_counter() - t)
    p50 = statistics.median(times)
    return batch / p50, p50 * 1e3


class InProcess:
    """ONNX Runtime in this process with a single server's session options (ONNX Runtime's default threads: one per
    core, as one process would use them, also when the server runs `--workers`), measured right after the h2load run
    it is compared with (the machine's other load changes slowly), one sample per round; the median is used."""

    def __init__(self, repository: Path):
        self.options = RuntimeOptions()
        self.runtimes = {m: ModelRuntime(repository / m / "1" / "model.onnx", self.options) for m in (LENET, RESNET)}
        self.samples: dict[str, list[float]] = {}

    def after(self, key: str, level: int, m: h2load.Measurement) -> None:
        if (key, level) == ("lenet_bn x64", 4):
            self.samples.setdefault("lenet_b64_images_per_s", []).append(in_process(self.runtimes[LENET], 64)[0])
        elif (key, level) == (RESNET, 1):
            self.samples.setdefault("resnet_b1_p50_ms", []).append(in_process(self.runtimes[RESNET], 1)[1])
        elif (key, level) == (RESNET, 32):
            formed = max(1, round(m.mean_batch or 1))
            self.samples.setdefault("resnet_formed_batch", []).append(formed)
            self.samples.setdefault("resnet_formed_images_per_s", []).append(in_process(self.runtimes[RESNET], formed)[0])

    def medians(self) -> dict:
        out = {k: statistics.median(v) for k, v in self.samples.items()}
        out["resnet_formed_batch"] = round(out["resnet_formed_batch"])
        return {**out, "samples": self.samples, "session_options": repr(self.options)}


def measure_all(cases: list[Case], args, ort: InProcess) -> dict[tuple[str, int], h2load.Measurement]:
    """Every case at every level, `args.runs` interleaved rounds; the median run of each."""
    runs: dict[tuple[str, int], list[h2load.Measurement]] = {}
    for round_index in range(args.runs):
        for case in cases:
            for level in case.levels:
                m = h2load.measure(case.endpoint, level, args.duration, args.warmup,
                                   level if case.one_connection else args.streams)
                runs.setdefault((case.key, level), []).append(m)
                print(f"  round {round_index + 1}/{args.runs} {case.key:<19} c{level:<3} {m.requests_per_s:>9,.0f} req/s "
                      f"p50 {m.p50_ms:6.2f} ms p99 {m.p99_ms:7.2f} ms batch "
                      f"{'n/a' if m.mean_batch is None else f'{m.mean_batch:.2f}'}", flush=True)
                ort.after(case.key, level, m)
    return {key: h2load.median_measurement(value) for key, value in runs.items()}


def judge(results: dict, ort: dict, echo_key: str, p50_echo_key: str, workers: int = 1) -> list[Target]:
    lenet = {c: results[(LENET, c)] for (k, c) in results if k == LENET}
    echo = results[(echo_key, 16)]
    targets = [
        Target(f"lenet_bn c16 req/s >= {ECHO_RATIO} x {echo_key} echo ({echo.requests_per_s:,.0f})",
               lenet[16].requests_per_s, ECHO_RATIO * echo.requests_per_s, True, "req/s"),
        Target(f"lenet_bn c16 p99 <= {ECHO_P99:g} x {echo_key} echo p99 ({echo.p99_ms:.2f} ms)",
               lenet[16].p99_ms, ECHO_P99 * echo.p99_ms, False, "ms"),
        Target(f"lenet_bn c16 mean batch >= {BATCH_C16:g}", lenet[16].mean_batch or 0, BATCH_C16, True),
        Target(f"lenet_bn c64 mean batch >= {BATCH_C64:g}", lenet[64].mean_batch or 0, BATCH_C64, True),
    ]
    multiplexed = results[(ONE_CONNECTION, 16)]
    targets += [
        Target(f"lenet_bn c16 on one connection: mean batch >= {BATCH_C16:g}", multiplexed.mean_batch or 0, BATCH_C16,
               True),
        Target(f"lenet_bn c16 on one connection req/s >= {NO_FALL} x on 16 ({lenet[16].requests_per_s:,.0f})",
               multiplexed.requests_per_s, NO_FALL * lenet[16].requests_per_s, True, "req/s",
               "" if workers == 1 else f"one connection reaches one of the {workers} workers (SO_REUSEPORT balances "
               "connections, not calls)"),
    ]
    levels = sorted(lenet)
    for low, high in zip(levels, levels[1:]):
        best_lower = max(lenet[c].requests_per_s for c in levels if c <= low)
        targets.append(Target(f"lenet_bn c{high} req/s >= {NO_FALL} x best lower level ({best_lower:,.0f})",
                              lenet[high].requests_per_s, NO_FALL * best_lower, True, "req/s"))
    for key, how in BIG_REQUESTS.items():
        targets.append(Target(f"lenet_bn 64 img/request ({how}) c4 img/s >= {BIG_RATIO} x in-process batch 64 "
                              f"({ort['lenet_b64_images_per_s']:,.0f})", results[(key, 4)].images_per_s,
                              BIG_RATIO * ort["lenet_b64_images_per_s"], True, "img/s"))
    resnet32, resnet1 = results[(RESNET, 32)], results[(RESNET, 1)]
    busy = "in-process ORT was slower than through the server: the machine was busy; rerun when it is quiet"
    targets.append(Target(f"resnet18 c32 img/s >= {RESNET_RATIO} x in-process at its batch {ort['resnet_formed_batch']} "
                          f"({ort['resnet_formed_images_per_s']:,.1f})", resnet32.images_per_s,
                          RESNET_RATIO * ort["resnet_formed_images_per_s"], True, "img/s",
                          busy if resnet32.images_per_s > 1.2 * ort["resnet_formed_images_per_s"] else ""))
    echo_p50 = results[(p50_echo_key, 1)].p50_ms
    added = resnet1.p50_ms - ort["resnet_b1_p50_ms"]
    targets.append(Target(f"resnet18 c1 server-added p50 <= {ADDED_P50} x {p50_echo_key} echo p50 ({echo_p50:.3f} ms)",
                          added, ADDED_P50 * echo_p50, False, "ms", busy if added < 0 else ""))
    return targets


def report(results: dict, ort: dict, targets: list[Target], header: str) -> str:
    lines = [header, "", "| server | request | concurrency | req/s | images/s | p50 ms | p99 ms | mean batch | "
             "server CPU ms/req | failed |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (key, level), m in results.items():
        batch = "n/a" if m.mean_batch is None else f"{m.mean_batch:.2f}"
        cpu = "n/a" if m.server_cpu_ms_per_request is None else f"{m.server_cpu_ms_per_request:.3f}"
        failed = m.http_failed + (m.grpc_failed or 0) + m.no_message
        lines.append(f"| {key} | {m.api}, {m.images_per_request} img, {m.request_frame_bytes:,} B | {level}"
                     f"{f' ({m.streams} streams/connection)' if m.streams > 1 else ''} | "
                     f"{m.requests_per_s:,.0f} | {m.images_per_s:,.0f} | {m.p50_ms:.2f} | {m.p99_ms:.2f} | {batch} | "
                     f"{cpu} | {failed} |")
    lines += ["", "In-process ONNX Runtime (the server's session options; median of the rounds' medians): "
              f"lenet_bn batch 64 {ort['lenet_b64_images_per_s']:,.0f} img/s; resnet18 batch 1 p50 "
              f"{ort['resnet_b1_p50_ms']:.2f} ms; resnet18 batch {ort['resnet_formed_batch']} "
              f"{ort['resnet_formed_images_per_s']:,.1f} img/s.", "",
              "| target | measured | bound | ratio | verdict |", "|---|---|---|---|---|"]
    for t in targets:
        lines.append(f"| {t.name} | {t.measured:,.2f} {t.unit} | {t.bound:,.2f} | {t.ratio:.2f} | {t.verdict} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-root", type=Path, default=ROOT, help="the checkout whose server runs (default: this one)")
    parser.add_argument("--repository", type=Path, help="model repository (default: <server-root>/model_repository)")
    parser.add_argument("--server-args", default="", help="extra `python -m server` arguments, e.g. '--threads 1'")
    parser.add_argument("--workers", type=int, default=1,
                        help="cnnserve --workers N, compared with echoes of N processes each (like for like)")
    parser.add_argument("--label", default="main", help="names the output files: bench/results/serving-<label>.*")
    parser.add_argument("--runs", type=int, default=3, help="interleaved rounds; each measurement is the median")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per h2load run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of h2load before each run, not measured")
    parser.add_argument("--streams", type=int, default=1, help="streams per h2load connection")
    parser.add_argument("--profile", action="store_true",
                        help="after the rounds, one more lenet_bn c16 run under py-spy --gil: serving-<label>-profile.txt")
    args = parser.parse_args()
    repository = args.repository or SERVER_ROOT / "model_repository"
    workers = ["--workers", str(args.workers)] if args.workers > 1 else []
    server = SpawnedServer(repository, ["--models", f"{LENET},{RESNET}", *workers, *args.server_args.split()])
    sync_echo, sync_target = start_echo(SERVER_ROOT / "bench" / "echo_server.py", SERVER_ROOT, args.workers)
    aio_echo, aio_target = start_echo(ROOT / "bench" / "echo_aio_server.py", ROOT, args.workers)
    pid = server.process.pid
    try:
        one = dict(model=LENET, images=1)
        cases = [
            Case("echo sync", h2load.endpoint("echo sync", "echo", sync_target, pid=sync_echo.pid, **one), (1, 16, 64)),
            Case("echo aio", h2load.endpoint("echo aio", "echo", aio_target, pid=aio_echo.pid, **one), (1, 16, 64)),
            Case(LENET, h2load.endpoint(LENET, "cnnserve", server.target, pid=pid, **one), (1, 16, 64)),
            Case(ONE_CONNECTION, h2load.endpoint(LENET, "cnnserve", server.target, pid=pid, **one), (16,),
                 one_connection=True),
            Case("lenet_bn x64", h2load.endpoint("cnnserve", "cnnserve", server.target, LENET, 64, pid=pid), (4,)),
            Case("lenet_bn x64 batch", h2load.endpoint("cnnserve batch", "cnnserve", server.target, LENET, 64, "batch",
                                                        pid=pid), (4,)),
            Case("lenet_bn x64 kserve", h2load.endpoint("kserve", "kserve", server.target, LENET, 64, pid=pid), (4,)),
            Case(RESNET, h2load.endpoint(RESNET, "cnnserve", server.target, RESNET, 1, pid=pid), (1, 32)),
        ]
        print(f"server: {SERVER_ROOT} ({repository}); {args.runs} interleaved rounds of {args.duration:g} s h2load runs")
        in_process_ort = InProcess(repository)
        results = measure_all(cases, args, in_process_ort)
        ort = in_process_ort.medians()
        profile = None
        if args.profile:
            prefix = RESULTS / f"serving-{args.label}-profile"
            m = h2load.measure(cases[2].endpoint, 16, max(args.duration, 20), args.warmup, args.streams, profile=prefix,
                               profile_args=("--gil", "--nonblocking"))
            profile = h2load.format_profile(h2load.summarize_pyspy(Path(f"{prefix}.raw.txt")), m.profile["command"],
                                            m.profile.get("threads"))
            Path(f"{prefix}.txt").write_text(profile)
    finally:
        server.stop()
        for echo in (sync_echo, aio_echo):
            echo.terminate()
            echo.wait(10)
    echo_key = max(("echo sync", "echo aio"), key=lambda k: results[(k, 16)].requests_per_s)
    p50_echo_key = min(("echo sync", "echo aio"), key=lambda k: results[(k, 1)].p50_ms)
    targets = judge(results, ort, echo_key, p50_echo_key, args.workers)
    commit = subprocess.run(["git", "-C", str(SERVER_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(SERVER_ROOT), "status", "--porcelain", "server"], capture_output=True,
                           text=True).stdout.strip()
    header = (f"serving-{args.label}: server {SERVER_ROOT} at {commit}{' + uncommitted server/ changes' if dirty else ''}; "
              f"{f'cnnserve --workers {args.workers} and echoes of {args.workers} processes; ' if args.workers > 1 else ''}"
              f"h2load {args.duration:g} s runs (+{args.warmup:g} s warm-up), {args.streams} stream(s) per connection, "
              f"median of {args.runs} interleaved round(s); grpcio {grpc.__version__}, onnxruntime {onnxruntime.__version__}; "
              f"{time.strftime('%Y-%m-%d %H:%M')}")
    text = report(results, ort, targets, header)
    print("\n" + text)
    if profile:
        print(profile)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"serving-{args.label}.md").write_text(text)
    write_json(f"serving-{args.label}", {
        "header": header, "server_root": str(SERVER_ROOT), "commit": commit, "dirty": bool(dirty),
        "measurements": [{"case": k, "level": c, **m.row()} for (k, c), m in results.items()],
        "in_process": ort, "targets": [{"name": t.name, "measured": t.measured, "bound": t.bound, "ratio": t.ratio,
                                        "passed": t.passed, "verdict": t.verdict} for t in targets]})


if __name__ == "__main__":
    main()
