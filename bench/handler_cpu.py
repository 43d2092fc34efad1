"""The cnnserve.v1 and KServe handlers' CPU per request, without gRPC and without a load generator.

    python bench/handler_cpu.py [--baseline-root DIR] [--rounds 3] [--seconds 4] [--calls]

The cnnserve.v1 `Classify` and KServe `ModelInfer` handlers are called directly on one event loop
by 16 closed-loop callers (their own caller identities, so the batcher forms runs of 16) with
already-serialized requests that each call parses, on the real lenet_bn ONNX Runtime session.
What is measured is the process's CPU time per request (all threads: ONNX Runtime's included),
so it is what the server's Python costs from parsed request to response message, plus ORT's
share of a batch-16 run. h2load measures the whole server, but on a shared 2-core machine its
requests/s swing by ±15 % between runs; this swings by a few percent, which makes it the number
to compare two versions of the data plane with (`--baseline-root`, run interleaved in the same
rounds). Each case runs in a fresh process of the checkout it measures. `--calls` also counts the Python
function calls per request (cProfile over 800 more requests): a count, not a time, so it compares two
versions on a machine too busy to time them (each request's share of its run's calls moves a little with
how the runs formed: compare the two columns of one run).
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, write_json

CASES = [("cnnserve", 1), ("kserve", 1), ("cnnserve", 64), ("kserve", 64)]
CALLERS = 16
CALLS_PER_CALLER = 50     # with --calls: the profiled requests, after the timed ones


class Context:
    """What the handlers ask of a grpc.aio ServicerContext."""

    def __init__(self, caller: int):
        self._peer = f"ipv4:127.0.0.1:{40000 + caller}"

    def time_remaining(self):
        return None

    def peer(self) -> str:
        return self._peer

    async def abort(self, code, details: str):
        raise RuntimeError(f"{code}: {details}")


def request_and_handler(api: str, images: int, dataplane):
    """The serialized request and the handler that parses and answers it."""
    pixels = bytes(range(256)) * 3 + bytes(16)          # one 28x28 uint8 image
    if api == "cnnserve":
        if (Path.cwd() / "server" / "proto").is_dir():   # a checkout from before the generated code moved
            from server.proto import classifier_pb2 as pb
        else:
            from cnnserve.proto import classifier_pb2 as pb
        from server.service import ClassifierService
        message = pb.ClassifyRequest(model="lenet_bn", images=[
            pb.Image(tensor=pb.Tensor(shape=[28, 28], dtype="uint8", data=pixels))] * images)
        return message.SerializeToString(), pb.ClassifyRequest.FromString, ClassifierService(dataplane).Classify
    from tritonclient.grpc import service_pb2 as kpb

    from server.kserve import KServeGrpcService
    message = kpb.ModelInferRequest(model_name="lenet_bn", inputs=[kpb.ModelInferRequest.InferInputTensor(
        name="image", datatype="UINT8", shape=[images, 1, 28, 28])], raw_input_contents=[pixels * images])
    return message.SerializeToString(), kpb.ModelInferRequest.FromString, KServeGrpcService(dataplane).ModelInfer


async def measure(api: str, images: int, seconds: float, calls: bool) -> dict:
    """In this process (the checkout on sys.path): CPU microseconds and wall requests/s over `seconds`."""
    from server.dataplane import DataPlane
    from server.metrics import Metrics
    from server.model_store import ModelStore
    from server.runtime import RuntimeOptions
    metrics = Metrics()
    store = ModelStore(Path("model_repository"), ["lenet_bn"], RuntimeOptions(), {}, metrics)
    loading = store.load_all()
    if asyncio.iscoroutine(loading):     # a checkout with model control loads on the loop; older ones did not
        await loading
    raw, parse, handler = request_and_handler(api, images, DataPlane(store, metrics, 64 * 2**20))
    done, stop = 0, 0.0

    async def caller(index: int) -> None:
        nonlocal done
        context = Context(index)
        while time.perf_counter() < stop:
            await handler(parse(raw), context)
            done += 1

    for timed in (False, True):                     # one second of warm-up, then the timed run
        stop = time.perf_counter() + (seconds if timed else 1.0)
        done, cpu, wall = 0, time.process_time(), time.perf_counter()
        await asyncio.gather(*(caller(i) for i in range(CALLERS)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    result = {"cpu_us_per_request": cpu / done * 1e6, "requests_per_s": done / wall}
    if calls:
        async def profiled_caller(index: int) -> None:
            context = Context(index)
            for _ in range(CALLS_PER_CALLER):
                await handler(parse(raw), context)
        profile = cProfile.Profile()
        profile.enable()
        await asyncio.gather(*(profiled_caller(i) for i in range(CALLERS)))
        profile.disable()
        profile.create_stats()
        result["calls_per_request"] = sum(n for _, n, *_ in profile.stats.values()) / (CALLS_PER_CALLER * CALLERS)
    try:
        totals = metrics.totals("lenet_bn", served=1)[1]
    except TypeError:                   # a checkout from before the statistics were kept per version
        totals = metrics.totals("lenet_bn")
    return {**result, "mean_batch": totals.inference_count / max(totals.execution_count, 1)}


def run_case(root: Path, api: str, images: int, seconds: float, calls: bool) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", api, str(images), str(seconds), str(int(calls))], cwd=root,
                         capture_output=True, text=True, timeout=300)
    if out.returncode:
        raise RuntimeError(f"{root}: {api} x{images} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-root", type=Path, help="another checkout, measured in the same rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--label", default="main")
    parser.add_argument("--calls", action="store_true", help="also count Python function calls per request")
    parser.add_argument("--child", nargs=4, metavar=("API", "IMAGES", "SECONDS", "CALLS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(Path.cwd()))
        api, images, seconds, calls = args.child[0], int(args.child[1]), float(args.child[2]), args.child[3] == "1"
        print(json.dumps(asyncio.run(measure(api, images, seconds, calls))))
        return
    roots = {"this": ROOT, **({"baseline": args.baseline_root.resolve()} if args.baseline_root else {})}
    samples: dict[tuple[str, str, int], list[dict]] = {}
    for round_ in range(args.rounds):
        for api, images in CASES:
            for name, root in roots.items():
                sample = run_case(root, api, images, args.seconds, args.calls)
                samples.setdefault((name, api, images), []).append(sample)
                print(f"  round {round_ + 1}/{args.rounds} {name:8} {api:8} x{images:<3} "
                      f"{sample['cpu_us_per_request']:8.1f} us CPU/request  {sample['requests_per_s']:9,.0f} req/s  "
                      f"batch {sample['mean_batch']:.1f}"
                      + (f"  {sample['calls_per_request']:.1f} calls/request" if args.calls else ""), flush=True)
    cpu = {key: [s["cpu_us_per_request"] for s in runs] for key, runs in samples.items()}
    median = {key: statistics.median(values) for key, values in cpu.items()}
    lines = [f"\nCPU microseconds per request, median (min-max) of {args.rounds} rounds of {args.seconds:g} s, "
             f"{CALLERS} callers (lenet_bn):", "", "| request | " + " | ".join(roots) +
             (" | this / baseline |" if len(roots) > 1 else " |"), "|---" * (len(roots) + 1 + (len(roots) > 1)) + "|"]
    for api, images in CASES:
        row = [f"{median[(name, api, images)]:.1f} ({min(cpu[(name, api, images)]):.0f}-{max(cpu[(name, api, images)]):.0f})"
               for name in roots]
        ratio = [f"{median[('this', api, images)] / median[('baseline', api, images)]:.2f}"] if len(roots) > 1 else []
        lines.append(f"| {api}, {images} image{'s' * (images > 1)} | " + " | ".join(row + ratio) + " |")
    if args.calls:
        calls = {key: statistics.median(s["calls_per_request"] for s in runs) for key, runs in samples.items()}
        lines += ["", "Python function calls per request (cProfile), median of the rounds:", "",
                  "| request | " + " | ".join(roots) + " |", "|---" * (len(roots) + 1) + "|"]
        lines += [f"| {api}, {images} image{'s' * (images > 1)} | "
                  + " | ".join(f"{calls[(name, api, images)]:.1f}" for name in roots) + " |" for api, images in CASES]
    print("\n".join(lines))
    write_json(f"handler-cpu-{args.label}", {"roots": {k: str(v) for k, v in roots.items()}, "median_us": {
        f"{name} {api} x{images}": value for (name, api, images), value in median.items()}, "samples": {
        f"{name} {api} x{images}": values for (name, api, images), values in samples.items()}, "rounds": args.rounds,
        "seconds": args.seconds, "callers": CALLERS})


if __name__ == "__main__":
    main()
