"""h2load (a C HTTP/2 load generator) driving gRPC servers with pre-built request frames.

    python bench/h2load.py --target 127.0.0.1:50051 --api cnnserve --model lenet_bn --concurrency 1,16,64
    python bench/h2load.py --target 127.0.0.1:8001 --api kserve --model lenet_bn --images 64 --concurrency 4
    python bench/h2load.py ... --server-pid PID --profile bench/results/profile   # py-spy over the run

A neutral load generator: it costs the server machine little CPU and does the same thing to every
server (cnnserve, a bare echo, Triton, MLServer). It posts one pre-built gRPC frame (a 5-byte
length prefix, then the serialized request) over h2c with `content-type: application/grpc` and
`te: trailers`. Install: `apt-get install nghttp2-client` (Debian/Ubuntu), `brew install nghttp2`.

h2load reads neither grpc-status nor the answer, so each measurement first sends the same bytes
once with grpcio and checks the answer (grpc-status OK, the right classes). During
the run, non-OK answers are counted two ways: the server's own failure count (KServe
`ModelStatistics`, where the server has it), and the DATA bytes received against what the OK
answers carry (a gRPC error comes back as headers alone, with no message).

Also from the server, over the run: the mean batch its batcher formed (`ModelStatistics`:
inference_count / execution_count), and its CPU time per request (/proc/<pid>/stat, the process
and its children). Latency percentiles come from h2load's per-request log (`--log-file`).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np
from PIL import Image
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CLASSIFY_PATH = "/cnnserve.v1.Classifier/Classify"
INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
ECHO_PATH = "/cnnserve.bench.Echo/Echo"
MIN_RIGHT = 0.8       # of the images in one request: the examples are real test images, and no model is perfect
SETTLE_S = 0.5        # after a run, for the server to count the requests h2load reset when its time was up
MAX_MESSAGE = 64 * 1024 * 1024
PYSPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
CHANNEL_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length, the bytes."""
    return b"\0" + len(message).to_bytes(4, "big") + message


def example_images(count: int) -> tuple[np.ndarray, list[int], list[bytes]]:
    """`count` real Fashion-MNIST test images (examples/<class>-*.png, cycling through the ten classes):
    uint8 [count, 28, 28], their classes, and the PNG files' bytes."""
    files = sorted(EXAMPLES.glob("[0-9]-*.png"), key=lambda p: int(p.name.split("-")[0]))
    chosen = [files[i % len(files)] for i in range(count)]
    pixels = np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.uint8) for p in chosen])
    return pixels, [int(p.name.split("-")[0]) for p in chosen], [p.read_bytes() for p in chosen]


def classify_request(model: str, count: int, encoding: str = "raw") -> tuple[bytes, list[int]]:
    """A serialized cnnserve.v1 ClassifyRequest of `count` images (raw uint8 tensors or PNG files), top-1."""
    from cnnserve.proto import classifier_pb2 as pb
    pixels, classes, pngs = example_images(count)
    if encoding == "raw":
        images = [pb.Image(tensor=pb.Tensor(shape=[28, 28], dtype="uint8", data=p.tobytes())) for p in pixels]
    elif encoding == "png":
        images = [pb.Image(encoded=b) for b in pngs]
    elif encoding == "batch":                # one [N, 28, 28] tensor (cnnserve.v1 `batch`, after commit 96bd026)
        batch = pb.Tensor(shape=[count, 28, 28], dtype="uint8", data=pixels.tobytes())
        return pb.ClassifyRequest(model=model, batch=batch, top_k=1).SerializeToString(), classes
    else:
        raise ValueError(f"encoding {encoding!r}: raw, png or batch")
    return pb.ClassifyRequest(model=model, images=images, top_k=1).SerializeToString(), classes


def infer_request(model: str, count: int, input_name: str = "image") -> tuple[bytes, list[int]]:
    """A serialized KServe v2 ModelInferRequest: one UINT8 [count, 1, 28, 28] tensor in raw_input_contents."""
    pixels, classes, _ = example_images(count)
    request = kpb.ModelInferRequest(model_name=model, id="h2load")
    request.inputs.add(name=input_name, datatype="UINT8", shape=[count, 1, 28, 28])
    request.outputs.add(name="logits")
    request.raw_input_contents.append(pixels.tobytes())
    return request.SerializeToString(), classes


@dataclass(frozen=True)
class Endpoint:
    """One gRPC method on one server, with the request to post and what the answer must say."""
    label: str                    # for tables: "cnnserve", "echo", "triton", ...
    api: str                      # cnnserve | kserve | echo
    target: str                   # host:port, h2c
    model: str                    # for the answer check and ModelStatistics ("" for echo)
    message: bytes                # the serialized request
    classes: tuple[int, ...]      # the right class of each image
    pid: int | None = None        # the server process, for CPU time
    statistics: bool = True       # whether the server answers KServe ModelStatistics

    @property
    def path(self) -> str:
        return {"cnnserve": CLASSIFY_PATH, "kserve": INFER_PATH, "echo": ECHO_PATH}[self.api]

    @property
    def images(self) -> int:
        return len(self.classes)


def endpoint(label: str, api: str, target: str, model: str, images: int = 1, encoding: str = "raw",
             pid: int | None = None, statistics: bool = True, echo_of: str = "cnnserve") -> Endpoint:
    """The request for `api`; an echo endpoint carries the bytes of the `echo_of` request (a request-sized echo)."""
    if api == "kserve" or (api == "echo" and echo_of == "kserve"):
        message, classes = infer_request(model, images)
    else:
        message, classes = classify_request(model, images, encoding)
    return Endpoint(label, api, target, model if api != "echo" else "", message, tuple(classes), pid,
                    statistics and api != "echo")


def answer_classes(api: str, answer: bytes) -> list[int]:
    """The top class of each image in a serialized answer."""
    if api == "cnnserve":
        from cnnserve.proto import classifier_pb2 as pb
        return [r.predictions[0].class_index for r in pb.ClassifyResponse.FromString(answer).results]
    response = kpb.ModelInferResponse.FromString(answer)
    index = [o.name for o in response.outputs].index("logits")
    shape = list(response.outputs[index].shape)
    if response.raw_output_contents:
        values = np.frombuffer(response.raw_output_contents[index], dtype="<f4")
    else:
        values = np.asarray(response.outputs[index].contents.fp32_contents, dtype=np.float32)
    return values.reshape(shape).argmax(1).tolist()


def check_answer(ep: Endpoint, timeout: float = 30) -> int:
    """Send the frame's bytes once with grpcio; raise unless grpc-status is OK and the classes are right
    (all of one image; at least MIN_RIGHT of several: resnet18 takes the shirt example for a pullover).
    Returns the size of the answer's gRPC frame (what h2load should receive per OK answer)."""
    with grpc.insecure_channel(ep.target, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(ep.path, request_serializer=None, response_deserializer=None)
        answer = call(ep.message, timeout=timeout)    # raises grpc.RpcError on a non-OK status
    if ep.api == "echo":
        if answer != ep.message:
            raise AssertionError(f"{ep.label}: the echo changed the bytes")
    else:
        got = answer_classes(ep.api, answer)
        right = sum(g == c for g, c in zip(got, ep.classes))
        if len(got) != len(ep.classes) or right < MIN_RIGHT * len(ep.classes):
            raise AssertionError(f"{ep.label}: {right} of {len(ep.classes)} answers right (classes {got[:10]}, "
                                 f"where {list(ep.classes)[:10]} are right)")
    return len(grpc_frame(answer))


def model_statistics(ep: Endpoint) -> dict | None:
    """The server's KServe ModelStatistics counters for the model, or None where it has none."""
    if not ep.statistics:
        return None
    with grpc.insecure_channel(ep.target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            response = stub.ModelStatistics(kpb.ModelStatisticsRequest(name=ep.model), timeout=10)
        except grpc.RpcError as error:
            if error.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND):
                return None
            raise
    if not response.model_stats:
        return None
    stats = [s for s in response.model_stats]
    return {"inference_count": sum(s.inference_count for s in stats),
            "execution_count": sum(s.execution_count for s in stats),
            "success": sum(s.inference_stats.success.count for s in stats),
            "fail": sum(s.inference_stats.fail.count for s in stats)}


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (worker processes, Triton's Python backend stubs)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of `pid` and its live descendants, in seconds."""
    if pid is None:
        return None
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])      # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


@dataclass
class H2loadRun:
    """What one h2load run reports, plus percentiles from its per-request log."""
    duration_s: float
    requests_per_s: float
    done: int
    succeeded: int
    failed: int                   # HTTP-level: non-2xx, resets, timeouts (grpc errors are HTTP 200)
    in_flight_at_end: int         # started, not done: h2load resets them when the time is up
    data_bytes: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    client_cpu_s: float           # h2load's own CPU time
    command: str = ""


def h2load_command(ep: Endpoint, frame_file: Path, concurrency: int, duration_s: float, streams: int = 1,
                   threads: int = 1, log_file: Path | None = None) -> list[str]:
    """`concurrency` requests in flight: concurrency/streams connections, `streams` streams on each."""
    if concurrency % streams:
        raise ValueError(f"concurrency {concurrency} is not a multiple of {streams} streams per connection")
    clients = concurrency // streams
    return ["h2load", "-c", str(clients), "-m", str(streams), "-t", str(min(threads, clients)),
            "-D", f"{duration_s:g}", "-d", str(frame_file),
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            *(["--log-file", str(log_file)] if log_file else []), f"http://{ep.target}{ep.path}"]


def run_h2load(command: list[str], log_file: Path | None) -> H2loadRun:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    completed = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = completed.stdout
    if completed.returncode != 0 or "finished in" not in out:
        raise RuntimeError(f"h2load failed ({completed.returncode}):\n{out[-2000:]}\n{completed.stderr[-2000:]}")
    finished = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    counts = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                       r"(\d+) errored, (\d+) timeout", out)
    data = re.search(r"traffic: .*?, .*?\((\d+)\) data", out)
    seconds = float(finished[1]) / (1000 if finished[2] == "ms" else 1)
    latencies = []
    if log_file:
        for line in log_file.read_text().splitlines():
            start_us, status, elapsed_us = line.split("\t")[:3]
            if status == "200":
                latencies.append(int(elapsed_us) / 1e3)
    q = np.percentile(latencies, [50, 90, 99]) if latencies else [float("nan")] * 3
    return H2loadRun(seconds, float(finished[3]), int(counts[3]), int(counts[4]),
                     int(counts[5]) + int(counts[6]) + int(counts[7]), int(counts[2]) - int(counts[3]), int(data[1]),
                     float(q[0]), float(q[1]), float(q[2]),
                     statistics.fmean(latencies) if latencies else float("nan"),
                     (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), " ".join(command))


@dataclass
class Measurement:
    label: str
    api: str
    model: str
    images_per_request: int
    concurrency: int
    streams: int
    duration_s: float
    requests_per_s: float
    images_per_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    requests: int
    http_failed: int
    grpc_failed: int | None       # the server's own failure count over the run (None: no statistics)
    no_message: int               # answers without a message, estimated from the DATA bytes (gRPC errors)
    mean_batch: float | None      # images per model execution over the run
    server_cpu_ms_per_request: float | None
    client_cpu_ms_per_request: float
    answer_frame_bytes: int
    request_frame_bytes: int
    profile: dict = field(default_factory=dict)

    def row(self) -> dict:
        return asdict(self)


def measure(ep: Endpoint, concurrency: int, duration_s: float = 10, warmup_s: float = 2, streams: int = 1,
            threads: int = 1, profile: Path | None = None, profile_args: tuple[str, ...] = ()) -> Measurement:
    """Check the answer, warm up, then one timed h2load run with the server's counters read around it.
    `profile`: also run py-spy on the server over the timed run, writing `<profile>.raw.txt` and a summary."""
    answer_bytes = check_answer(ep)
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        frame_file, log_file = Path(tmp) / "request.bin", Path(tmp) / "requests.log"
        frame_file.write_bytes(grpc_frame(ep.message))
        if warmup_s > 0:
            run_h2load(h2load_command(ep, frame_file, concurrency, warmup_s, streams, threads), None)
            time.sleep(SETTLE_S)
        stats_before, cpu_before = model_statistics(ep), cpu_seconds(ep.pid)
        spy = start_pyspy(ep.pid, duration_s, profile, profile_args) if profile else None
        threads_before = thread_cpu(ep.pid) if profile else {}
        run = run_h2load(h2load_command(ep, frame_file, concurrency, duration_s, streams, threads, log_file), log_file)
        threads_after = thread_cpu(ep.pid) if profile else {}
        time.sleep(SETTLE_S)
        stats_after, cpu_after = model_statistics(ep), cpu_seconds(ep.pid)
        summary = finish_pyspy(spy, profile) if spy else {}
        if profile:
            summary["threads"] = thread_table(threads_before, threads_after, python_threads(ep.pid), run.done)
    mean_batch = grpc_failed = None
    if stats_before and stats_after:
        executions = stats_after["execution_count"] - stats_before["execution_count"]
        inferences = stats_after["inference_count"] - stats_before["inference_count"]
        mean_batch = inferences / executions if executions else None
        grpc_failed = max(0, stats_after["fail"] - stats_before["fail"] - run.in_flight_at_end)   # those reset: CANCELLED
    server_cpu = None if cpu_before is None else (cpu_after - cpu_before) / max(run.done, 1) * 1e3
    no_message = max(0, run.succeeded - round(run.data_bytes / answer_bytes))
    return Measurement(ep.label, ep.api, ep.model, ep.images, concurrency, streams, run.duration_s, run.requests_per_s,
                       run.requests_per_s * ep.images, run.p50_ms, run.p99_ms, run.mean_ms, run.done, run.failed,
                       grpc_failed, no_message, mean_batch, server_cpu, run.client_cpu_s / max(run.done, 1) * 1e3,
                       answer_bytes, len(ep.message) + 5, summary)


def median_measurement(runs: list[Measurement]) -> Measurement:
    """The run with the median requests/s (its latencies and counters stay together; with an even number of
    runs, the faster of the two middle ones: use odd counts for a true median); failures summed."""
    ordered = sorted(runs, key=lambda m: m.requests_per_s)
    chosen = ordered[len(ordered) // 2]
    chosen.http_failed = sum(m.http_failed for m in runs)
    chosen.no_message = sum(m.no_message for m in runs)
    if all(m.grpc_failed is not None for m in runs):
        chosen.grpc_failed = sum(m.grpc_failed for m in runs)
    chosen.profile = {**chosen.profile, "runs": len(runs), "requests_per_s_runs": [m.requests_per_s for m in runs]}
    return chosen


# --- py-spy -------------------------------------------------------------------------------------------------

def start_pyspy(pid: int | None, duration_s: float, prefix: Path, extra: tuple[str, ...]) -> subprocess.Popen:
    if pid is None:
        raise ValueError("--profile needs the server's pid")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    command = [PYSPY, "record", "--pid", str(pid), "--duration", str(max(1, int(duration_s) - 1)), "--rate", "100",
               "--format", "raw", *(["--subprocesses"] if len(process_tree(pid)) > 1 else []), "-o", f"{prefix}.raw.txt", *extra]
    spy = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    spy.command = " ".join(command)
    return spy


def finish_pyspy(spy: subprocess.Popen, prefix: Path) -> dict:
    out, _ = spy.communicate(timeout=120)
    if spy.returncode != 0:
        raise RuntimeError(f"py-spy failed ({spy.returncode}): {out[-2000:]}")
    return {"raw": f"{prefix}.raw.txt", "command": spy.command, "pyspy_output": out.strip().splitlines()[-2:]}


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of `pid` and its descendants."""
    out = {}
    for p in process_tree(pid):
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def python_threads(pid: int) -> dict[int, str]:
    """OS thread id -> 'name: the function it is in now', for the Python threads (py-spy dump)."""
    children = ["--subprocesses"] if len(process_tree(pid)) > 1 else []
    dump = subprocess.run([PYSPY, "dump", "--pid", str(pid), "--json", *children], capture_output=True, text=True, timeout=60)
    labels = {}
    for entry in json.loads(dump.stdout or "[]"):
        threads = entry.get("threads", [entry]) if isinstance(entry, dict) else []
        for thread in threads:
            frames = thread.get("frames") or [{}]
            labels[thread.get("os_thread_id")] = f"{thread.get('thread_name') or '?'}: {frames[0].get('name', '?')}"
    return labels


def thread_table(before: dict[int, float], after: dict[int, float], labels: dict[int, str], requests: int) -> dict:
    """CPU ms per request of each thread over the run, busiest first; threads py-spy cannot see are native
    (ONNX Runtime's intra-op pool, gRPC core's event engine)."""
    rows = sorted(((after[t] - before.get(t, 0)) * 1e3 / max(requests, 1), t) for t in after)[::-1]
    label = lambda t: labels.get(t, "native thread (ONNX Runtime pool, gRPC core...)")
    return {"python_ms_per_request": sum(v for v, t in rows if t in labels),
            "native_ms_per_request": sum(v for v, t in rows if t not in labels),
            "busiest": [(t, v, label(t)) for v, t in rows[:10]]}


def frame_key(frame: str) -> str:
    """'func (path/to/file.py:123)' -> 'func (file.py)': one entry per function, not per line."""
    match = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not match:
        return frame
    path = match[2]
    for marker in ("site-packages/", f"{ROOT}/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match[1]} ({path})"


def line_key(frame: str) -> str:
    """'func (path/to/file.py:123)' -> 'func (file.py:123)'."""
    match = re.match(r"(.*) \((.*?)(:\d+)?\)$", frame)
    return f"{frame_key(frame)[:-1]}{match[3] or ''})" if match else frame


def summarize_pyspy(raw: Path, top: int = 15, skip: tuple[str, ...] = ()) -> dict:
    """Own and total samples per function from py-spy's raw (collapsed-stack) output.
    `skip`: leaf functions to leave out (e.g. threads parked in grpc's poller: waiting, not working)."""
    own, own_lines, total, samples = Counter(), Counter(), Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        raw_frames = [f for f in stack.split(";") if f and not f.startswith("process ")]   # --subprocesses: a root frame
        frames = [frame_key(f) for f in raw_frames]
        if not frames or any(frames[-1].startswith(s) for s in skip):
            continue
        n = int(count)
        samples += n
        own[frames[-1]] += n
        own_lines[f"{frame_key(raw_frames[-2]) if len(raw_frames) > 1 else ''} -> {line_key(raw_frames[-1])}"] += n
        for key in set(frames):
            total[key] += n
    return {"samples": samples,
            "own": [(k, v, v / samples) for k, v in own.most_common(top)],
            "own_lines": [(k, v, v / samples) for k, v in own_lines.most_common(top)],
            "total": [(k, v, v / samples) for k, v in total.most_common(top)]}


def format_profile(summary: dict, title: str, threads: dict | None = None) -> str:
    lines = [title]
    if threads:
        lines += [f"CPU per request by thread: Python threads {threads['python_ms_per_request']:.3f} ms, "
                  f"native threads {threads['native_ms_per_request']:.3f} ms; busiest:"]
        lines += [f"  tid {tid:<8} {ms:.3f} ms/request  {what}" for tid, ms, what in threads["busiest"]]
        lines.append("")
    lines += [f"py-spy samples: {summary['samples']}", "", "top by own time (the function itself, leaf of the stack):"]
    lines += [f"  {share:6.1%} {count:7d}  {key}" for key, count, share in summary["own"]]
    lines += ["", "top by own time, by line (caller -> the line itself):"]
    lines += [f"  {share:6.1%} {count:7d}  {key}" for key, count, share in summary["own_lines"]]
    lines += ["", "top by total time (the function and everything it called):"]
    lines += [f"  {share:6.1%} {count:7d}  {key}" for key, count, share in summary["total"]]
    return "\n".join(lines) + "\n"


# --- CLI ----------------------------------------------------------------------------------------------------

def print_table(rows: list[Measurement]) -> None:
    print(f"{'server':<10} {'api':<8} {'model':<9} {'img/req':>7} {'conc':>4} {'req/s':>9} {'img/s':>9} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'batch':>6} {'srv cpu ms/req':>14} {'failed':>6}")
    for m in rows:
        failed = m.http_failed + (m.grpc_failed or 0) + m.no_message
        batch = "n/a" if m.mean_batch is None else f"{m.mean_batch:.2f}"
        cpu = "n/a" if m.server_cpu_ms_per_request is None else f"{m.server_cpu_ms_per_request:.3f}"
        print(f"{m.label:<10} {m.api:<8} {m.model:<9} {m.images_per_request:>7} {m.concurrency:>4} {m.requests_per_s:>9,.0f} "
              f"{m.images_per_s:>9,.0f} {m.p50_ms:>7.2f} {m.p99_ms:>7.2f} {batch:>6} {cpu:>14} {failed:>6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port of an h2c (plaintext) gRPC server")
    parser.add_argument("--api", choices=["cnnserve", "kserve", "echo"], default="cnnserve")
    parser.add_argument("--model", default="lenet_bn")
    parser.add_argument("--images", type=int, default=1, help="images per request")
    parser.add_argument("--encoding", choices=["raw", "png", "batch"], default="raw",
                        help="cnnserve.v1 images: a tensor each, a PNG each, or one batch tensor")
    parser.add_argument("--concurrency", default="1,16,64", help="requests in flight, comma-separated levels")
    parser.add_argument("--streams", type=int, default=1, help="streams per connection (connections = concurrency / this)")
    parser.add_argument("--threads", type=int, default=1, help="h2load threads")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of h2load before each run, not measured")
    parser.add_argument("--runs", type=int, default=1, help="runs per level; the median is reported")
    parser.add_argument("--server-pid", type=int, help="for server CPU time per request (and --profile)")
    parser.add_argument("--no-statistics", action="store_true", help="the server has no KServe ModelStatistics")
    parser.add_argument("--write-frame", type=Path, help="only write the request frame to this file, and exit")
    parser.add_argument("--profile", type=Path, help="py-spy the server over each run: PREFIX.raw.txt, PREFIX.txt")
    parser.add_argument("--profile-args", default="", help="extra py-spy record arguments, e.g. '--gil' or '--native'")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args()
    ep = endpoint(args.api, args.api, args.target, args.model, args.images, args.encoding, args.server_pid,
                  not args.no_statistics)
    if args.write_frame:
        args.write_frame.write_bytes(grpc_frame(ep.message))
        print(f"wrote {args.write_frame} ({len(ep.message) + 5} bytes); post it to {ep.path}")
        return
    rows = []
    for concurrency in map(int, args.concurrency.split(",")):
        runs = []
        for i in range(args.runs):
            prefix = args.profile and args.profile.with_name(f"{args.profile.name}-c{concurrency}-{i}")
            runs.append(measure(ep, concurrency, args.duration, args.warmup, args.streams, args.threads, prefix,
                                tuple(args.profile_args.split())))
            if prefix:
                summary = summarize_pyspy(Path(f"{prefix}.raw.txt"))
                Path(f"{prefix}.txt").write_text(format_profile(summary, runs[-1].profile["command"],
                                                                runs[-1].profile.get("threads")))
                print(Path(f"{prefix}.txt").read_text())
        rows.append(median_measurement(runs))
    print(f"h2load {args.duration:g} s per run, {args.runs} run(s) per level (median), {args.streams} stream(s) per connection")
    print_table(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([m.row() for m in rows], indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
