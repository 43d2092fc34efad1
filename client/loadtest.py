"""Load generator for a cnnserve server.

    cnnserve loadtest --spawn-server model_repository --model lenet --concurrency 1,4,16,64
    cnnserve loadtest --target 127.0.0.1:50051 --model resnet18 --rate 200 --duration 10
    cnnserve loadtest --spawn-server model_repository --model lenet_bn --protocol kserve-http

Closed loop (`--concurrency`): each of C callers sends its next request when the previous one
answers. Open loop (`--rate`): requests leave at Poisson-distributed times whatever the server
does, and each latency is measured from the request's intended send time, so a server that
falls behind shows it (no coordinated omission). Callers are spread over `--processes` client
processes (asyncio gRPC in each) so the client is not the bottleneck.

`python -m client.loadtest` and `python -m server.loadtest` run the same.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import json
import multiprocessing
import queue
import random
import socket
import sys
import time
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from cnnserve.entry import DefaultsHelpFormatter, exit_if_missing, program_name, quiet_when_stdout_closes

with exit_if_missing("client"):
    import grpc
    import numpy as np

    from client.channel import ClientSecurity, add_security_flags, connect, message_limits, security_from
    from cnnserve.proto import classifier_pb2 as pb
    from cnnserve.proto import classifier_pb2_grpc

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
    protocol: str = "cnnserve"
    security: ClientSecurity = ClientSecurity()


PROTOCOLS = ("cnnserve", "kserve-grpc", "kserve-http")


class CallFailed(Exception):
    def __init__(self, code: str, details: str):
        super().__init__(details)
        self.code, self.details = code, details


def random_pixels(workload: Workload, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (workload.batch, 28, 28), dtype=np.uint8)


def build_request(workload: Workload, seed: int) -> pb.ClassifyRequest:
    images = [pb.Image(tensor=pb.Tensor(shape=[28, 28], dtype="uint8", data=x.tobytes()))
              for x in random_pixels(workload, seed)]
    return pb.ClassifyRequest(model=workload.model, images=images, features=list(workload.features))


@asynccontextmanager
async def open_sender(workload: Workload, seed: int):
    """An async `send()` that makes one request of `workload.protocol` and raises CallFailed when it fails.

    The same images and outputs in every protocol: uint8 pixels in; the logits and the requested
    feature maps out (cnnserve.v1 adds top-1 predictions, its own response format)."""
    pixels = random_pixels(workload, seed)
    if workload.protocol == "kserve-http":
        import httpx
        outputs = [{"name": name, "parameters": {"binary_data": True}} for name in ("logits", *workload.features)]
        header = json.dumps({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [len(pixels), 1, 28, 28],
                                         "parameters": {"binary_data_size": pixels.nbytes}}],
                             "outputs": outputs}).encode()
        body, headers = header + pixels.tobytes(), {"Inference-Header-Content-Length": str(len(header))}
        security = workload.security
        headers.update(security.metadata())
        # TCP_NODELAY: httpx writes headers and body separately; with Nagle on, each request of a
        # kept-alive connection waits ~40 ms for the server's delayed ACK (curl sets it too).
        transport = httpx.AsyncHTTPTransport(verify=security.ssl_context() if security.tls else True,
                                             socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                                             limits=httpx.Limits(max_connections=None, max_keepalive_connections=None))
        async with httpx.AsyncClient(base_url=f"{'https' if security.tls else 'http'}://{workload.target}",
                                     timeout=workload.timeout_s, transport=transport) as client:
            async def send() -> None:
                try:
                    response = await client.post(f"/v2/models/{workload.model}/infer", content=body, headers=headers)
                except httpx.HTTPError as error:
                    raise CallFailed(type(error).__name__, str(error)) from None
                if response.status_code != 200:
                    raise CallFailed(f"HTTP_{response.status_code}", response.text)
            yield send
        return
    options, security = message_limits(workload.max_message_mb), workload.security
    channel = (grpc.aio.secure_channel(workload.target, security.credentials(), options=options) if security.tls
               else grpc.aio.insecure_channel(workload.target, options=options))
    async with channel:
        if workload.protocol == "kserve-grpc":
            from tritonclient.grpc import service_pb2 as kpb
            from tritonclient.grpc import service_pb2_grpc
            request = kpb.ModelInferRequest(
                model_name=workload.model, raw_input_contents=[pixels.tobytes()],
                inputs=[kpb.ModelInferRequest.InferInputTensor(name="image", datatype="UINT8",
                                                               shape=[len(pixels), 1, 28, 28])],
                outputs=[kpb.ModelInferRequest.InferRequestedOutputTensor(name=name)
                         for name in ("logits", *workload.features)])
            method = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        else:
            request = build_request(workload, seed)
            method = classifier_pb2_grpc.ClassifierStub(channel).Classify

        metadata = security.metadata()

        async def send() -> None:
            try:
                await method(request, timeout=workload.timeout_s, metadata=metadata)
            except grpc.aio.AioRpcError as error:
                raise CallFailed(error.code().name, error.details() or "") from None
        yield send


def arrival_offsets(workload: Workload, rate: float, index: int) -> list[float]:
    """Open loop: when process `index` sends at `rate`/s, in seconds from the level's start to the end of its
    measured time. Poisson arrivals, the same for the same seed, so the requests a run sends are known before
    it starts; a server that falls behind cannot make the client send fewer."""
    rng, offsets, offset = random.Random(workload.seed * 1000 + index), [], 0.0
    while offset < workload.warmup_s + workload.duration_s:
        offsets.append(offset)
        offset += rng.expovariate(rate)
    return offsets


async def _drive(workload: Workload, level: Level, share: float, start_at: float, index: int,
                 progress) -> tuple[list[tuple[float, float, str]], dict[str, str]]:
    """Run this process's share of a level; return (intended send time, latency s, status) per measured
    request, and the first error message seen for each failing status."""
    measure_from = start_at + workload.warmup_s
    end = measure_from + workload.duration_s
    records: list[tuple[float, float, str]] = []
    first_errors: dict[str, str] = {}
    async with open_sender(workload, workload.seed + index) as send:

        async def call(intended: float, measured: bool) -> None:
            try:
                await send()
                code = "OK"
            except CallFailed as error:
                code = error.code
                first_errors.setdefault(code, error.details[:300])
            if measured:
                records.append((intended, time.time() - intended, code))
                with progress.get_lock():
                    progress.value += 1

        await asyncio.sleep(max(0.0, start_at - time.time()))
        if level.concurrency:
            async def caller() -> None:
                while (now := time.time()) < end:
                    await call(now, measured=now >= measure_from)
            await asyncio.gather(*(caller() for _ in range(round(share))))
        else:
            pending = []
            for offset in arrival_offsets(workload, share, index):
                await asyncio.sleep(max(0.0, start_at + offset - time.time()))
                pending.append(asyncio.ensure_future(call(start_at + offset, measured=offset >= workload.warmup_s)))
            await asyncio.gather(*pending)
    return records, first_errors


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
    records, first_errors, finished = [], {}, 0
    while finished < len(processes):
        try:
            process_records, process_errors = results.get(timeout=0.5)
            records += process_records
            first_errors = {**process_errors, **first_errors}
            finished += 1
        except queue.Empty:
            pass   # nothing finished yet: refresh the progress line
        if live:
            elapsed = time.time() - start_at
            measured = min(elapsed - workload.warmup_s, workload.duration_s)
            phase = "warm-up" if elapsed < workload.warmup_s else f"{measured:4.1f}/{workload.duration_s:g} s"
            print(f"\r  {level}: {phase}, {progress.value} measured requests", end="", file=sys.stderr, flush=True)
    for p in processes:
        p.join()
    if live:
        print(file=sys.stderr)
    return {**summarise(workload, level, records), "first_errors": first_errors}


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
        "protocol": workload.protocol,
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


def failed_text(failed: dict[str, int]) -> str:
    """'NOT_FOUND:12;UNAVAILABLE:3', or '0': one plain value for a table cell or a CSV column."""
    return ";".join(f"{code}:{count}" for code, count in failed.items()) or "0"


def print_table(rows: list[dict]) -> None:
    print(f"{'level':>14} {'sent':>7} {'ok':>7} {'failed':>12} {'req/s':>9} {'img/s':>9} "
          f"{'p50':>8} {'p90':>8} {'p99':>8} {'p99.9':>8} {'max':>8}  {'p50 per quarter':>26}  (ms)")
    for r in rows:
        level = f"c={r['concurrency']}" if r["mode"] == "closed" else f"rate={r['rate']:g}"
        quarters = " ".join(f"{q:.2f}" for q in r["p50_by_quarter_ms"]) or "-"
        print(f"{level:>14} {r['sent']:>7} {r['ok']:>7} {failed_text(r['failed']):>12} {r['requests_per_s']:>9.1f} "
              f"{r['images_per_s']:>9.1f} {r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['p999_ms']:>8.2f} {r['max_ms']:>8.2f}  {quarters:>26}")
        for code, message in r.get("first_errors", {}).items():
            print(f"{'':>14} first {code}: {message}")


def write_outputs(rows: list[dict], json_path: Path | None, csv_path: Path | None) -> None:
    if json_path:
        json_path.write_text(json.dumps(rows, indent=2))
    if csv_path:
        with open(csv_path, "w", newline="") as f:
            quarter_columns = [f"p50_q{i}_ms" for i in range(1, 5)]
            fields = [k for k in rows[0] if k not in ("p50_by_quarter_ms", "first_errors")] + quarter_columns
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({**r, "failed": failed_text(r["failed"]), "features": ",".join(r["features"]),
                              **dict(zip(quarter_columns, r["p50_by_quarter_ms"]))} for r in rows)


def check_target(target: str, model: str, protocol: str = "cnnserve", timeout: float = 5.0,
                 security: ClientSecurity | None = None) -> str | None:
    """Why a run against `model` at `target` cannot work (no server, unknown or not-ready model), or None."""
    security = security or ClientSecurity()
    if protocol == "kserve-http":
        import urllib.error
        import urllib.request
        try:
            context = security.ssl_context() if security.tls else None
            request = urllib.request.Request(f"{'https' if security.tls else 'http'}://{target}/v2/models/{model}/ready",
                                             headers=dict(security.metadata()))
            urllib.request.urlopen(request, timeout=timeout, context=context).close()
        except urllib.error.HTTPError as error:
            return f"HTTP {error.code}: {error.read().decode(errors='replace')[:300]}"
        except OSError as error:
            return f"no KServe v2 HTTP server answers at {target} ({error})"
        return None
    with connect(target, security=security) as channel:
        try:
            info = classifier_pb2_grpc.ClassifierStub(channel).GetModel(pb.GetModelRequest(name=model), timeout=timeout,
                                                                        metadata=security.metadata())
        except grpc.RpcError as error:
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return f"no cnnserve server answers at {target} ({error.code().name}: {error.details()})"
            return f"{error.code().name}: {error.details()}"
    return None if info.ready else f"model {model} is not serving: {info.reason}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=program_name(), description=__doc__.splitlines()[0],
                                     formatter_class=DefaultsHelpFormatter)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--target", default="127.0.0.1:50051", help="host:port of a running server")
    where.add_argument("--spawn-server", metavar="REPOSITORY", type=Path,
                       help="start `python -m server` on this repository for the run, then stop it")
    parser.add_argument("--server-args", default="", help="extra arguments for the spawned server")
    parser.add_argument("--model", required=True, help="the model to load-test")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="cnnserve",
                        help="cnnserve.v1 Classify, KServe v2 ModelInfer over gRPC, or KServe v2 infer over HTTP "
                             "(--target is then the server's --http-port)")
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
    add_security_flags(parser)
    parser.add_argument("--csv", type=Path, help="write the results here as CSV")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    levels = [Level(rate=args.rate)] if args.rate else [Level(concurrency=int(c)) for c in args.concurrency.split(",")]
    spawned = None
    if args.spawn_server:
        from client.spawn import SpawnedServer
        if not args.spawn_server.is_dir():
            parser.exit(2, f"error: --spawn-server {args.spawn_server}: no such model repository directory\n")
        try:
            spawned = SpawnedServer(args.spawn_server, args.server_args.split(),
                                    with_http=args.protocol == "kserve-http")
        except (RuntimeError, TimeoutError) as error:
            lines = [line for line in str(error).splitlines() if line.strip()]   # first: what, last: the server's why
            parser.exit(1, f"error: the spawned server did not start ({lines[0].rstrip(':')}): {lines[-1]}\n")
    target = (spawned.http_target if args.protocol == "kserve-http" else spawned.target) if spawned else args.target
    security = security_from(args)
    problem = check_target(target, args.model, args.protocol, security=security)
    if problem:
        if spawned:
            spawned.stop()
        parser.exit(1, f"error: {problem}\n")
    features = tuple(["all"] if args.features == "all" else [f for f in args.features.split(",") if f])
    workload = Workload(target=target, model=args.model, batch=args.batch, features=features,
                        warmup_s=args.warmup, duration_s=args.duration, timeout_s=args.timeout,
                        processes=args.processes, protocol=args.protocol, security=security)
    try:
        rows = []
        for level in levels:
            rows.append(run_level(workload, level))
        with quiet_when_stdout_closes():
            print_table(rows)
        write_outputs(rows, args.json, args.csv)
    finally:
        if spawned:
            spawned.stop()
    return 0 if all(not r["failed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
