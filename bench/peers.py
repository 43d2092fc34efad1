"""Peers: the same model files served by cnnserve, MLServer and Triton's Python backend, side by side.

    python bench/peers.py --peers-venv DIR [--runs 3] [--duration 10] [--label main]
    python bench/peers.py --peers-venv DIR --server-root OTHER_CHECKOUT --label before
    python bench/peers.py --cnnserve-workers 1,2 ...      # cnnserve once per setting, side by side

Run on demand, not in CI: MLServer and Triton live in their own virtual environment (install:
bench/peers/README.md). All three serve the shipped `lenet_bn` and `resnet18` model files on
cnnserve's own ONNX Runtime session options (server/runtime.py), and all three are driven the same
way: KServe v2 gRPC `ModelInfer` with one UINT8 tensor in raw_input_contents, posted by h2load
(`bench/h2load.py`, answers checked with grpcio first), in interleaved rounds, median of the rounds.
The bare grpcio echoes (sync and asyncio) run beside them as the floor of a Python gRPC server.

  cnnserve   python -m server (this checkout, or --server-root), batching as the model's config.pbtxt
  MLServer   custom runtime bench/peers/mlserver/cnnserve_runtime.py, adaptive batching (64 images, 2 ms)
  Triton     the tritonserver binary the nvidia-pytriton wheel ships, Python backend
             bench/peers/triton/model.py, dynamic batching at Triton's defaults (64 images, no delay)

Prints the measurements and a side-by-side table; writes bench/results/peers-<label>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import h2load
from common import RESULTS, ROOT, server_root, start_echo, write_json
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc

PEERS = ROOT / "bench" / "peers"
MODELS = ("lenet_bn", "resnet18")
SERVERS = ("cnnserve", "mlserver", "triton")
ROWS = [  # (case, model, images per request, concurrency)
    ("lenet_bn", "lenet_bn", 1, 1), ("lenet_bn", "lenet_bn", 1, 16), ("lenet_bn", "lenet_bn", 1, 64),
    ("lenet_bn x64", "lenet_bn", 64, 4), ("resnet18", "resnet18", 1, 1), ("resnet18", "resnet18", 1, 32)]
ECHO_LEVELS = (1, 16, 64)


SERVER_ROOT = server_root()
sys.path.insert(0, str(SERVER_ROOT))

from client.spawn import SpawnedServer, free_port  # noqa: E402


@dataclass
class Running:
    name: str
    target: str
    process: subprocess.Popen
    version: str
    settings: str
    statistics: bool = True

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(45)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def venv_facts(venv: Path) -> dict:
    code = ("import json, sysconfig, importlib.metadata as m\n"
            "v = lambda p: m.version(p)\n"
            "print(json.dumps({'libdir': sysconfig.get_config_var('LIBDIR'), 'purelib': sysconfig.get_paths()['purelib'],"
            " 'python': sysconfig.get_python_version(), 'mlserver': v('mlserver'), 'pytriton': v('nvidia-pytriton'),"
            " 'onnxruntime': v('onnxruntime'), 'grpcio': v('grpcio')}))")
    return json.loads(subprocess.run([str(venv / "bin" / "python"), "-c", code], check=True, capture_output=True,
                                     text=True).stdout)


def wait_ready(name: str, target: str, process: subprocess.Popen, log: Path, timeout: float = 180,
               models=MODELS) -> None:
    """Until the KServe ModelReady of every model says yes (or the process exits)."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}; its log, {log}:\n{log.read_text()[-3000:]}")
            try:
                if all(stub.ModelReady(kpb.ModelReadyRequest(name=m), timeout=2).ready for m in models):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.25)
    raise TimeoutError(f"{name} not ready after {timeout} s; its log, {log}:\n{log.read_text()[-3000:]}")


def server_version(target: str) -> str:
    with grpc.insecure_channel(target) as channel:
        meta = service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerMetadata(kpb.ServerMetadataRequest(), timeout=5)
    return f"{meta.name} {meta.version}"


def start_mlserver(venv: Path, facts: dict, repository: Path, run_dir: Path) -> Running:
    """MLServer on a copy of bench/peers/mlserver whose model-settings point at `repository`'s model files."""
    home = run_dir / "mlserver"
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(PEERS / "mlserver", home, ignore=shutil.ignore_patterns("__pycache__"))
    for model in MODELS:
        settings_file = home / model / "model-settings.json"
        settings = json.loads(settings_file.read_text())
        settings["parameters"]["uri"] = str(repository / model / "1" / "model.onnx")
        settings_file.write_text(json.dumps(settings, indent=2))
    grpc_port = free_port()
    env = {**os.environ, "CNNSERVE_ROOT": str(SERVER_ROOT), "PYTHONPATH": str(home),
           "MLSERVER_GRPC_PORT": str(grpc_port), "MLSERVER_HTTP_PORT": str(free_port()),
           "MLSERVER_METRICS_PORT": str(free_port())}
    log = run_dir / "mlserver.log"
    process = subprocess.Popen([str(venv / "bin" / "mlserver"), "start", str(home)], env=env, cwd=home,
                               stdout=log.open("w"), stderr=subprocess.STDOUT)
    target = f"127.0.0.1:{grpc_port}"
    wait_ready("MLServer", target, process, log)
    server_settings = json.loads((home / "settings.json").read_text())
    model_settings = json.loads((home / MODELS[0] / "model-settings.json").read_text())
    return Running("MLServer", target, process, f"mlserver {facts['mlserver']}",
                   f"parallel_workers {server_settings['parallel_workers']}, adaptive batching max_batch_size "
                   f"{model_settings['max_batch_size']}, max_batch_time {model_settings['max_batch_time'] * 1e3:g} ms",
                   statistics=False)


def start_triton(venv: Path, facts: dict, repository: Path, run_dir: Path, models: dict[str, str] | None = None,
                 http_port: int | None = None) -> Running:
    """The tritonserver binary from the nvidia-pytriton wheel, with the Python backend and the stub for the
    peers venv's Python (as pytriton itself lays them out), on a model repository of bench/peers/triton
    configs, model.py and links to `repository`'s model files. `models`: {config folder in bench/peers/triton:
    the model in `repository` whose file it serves} (default: lenet_bn and resnet18, logits alone);
    `http_port`: serve KServe v2 HTTP there too (default: gRPC only)."""
    models = models or {model: model for model in MODELS}
    site = Path(facts["purelib"])
    dist = site / "pytriton" / "tritonserver"
    home = run_dir / "triton"
    shutil.rmtree(home, ignore_errors=True)
    backend = home / "backends" / "python"
    backend.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy(dist / "backends" / "python" / name, backend / name)
    shutil.copy(dist / "python_backend_stubs" / facts["python"] / "triton_python_backend_stub", backend)
    for model, source in models.items():
        version = home / "repository" / model / "1"
        version.mkdir(parents=True)
        shutil.copy(PEERS / "triton" / model / "config.pbtxt", version.parent / "config.pbtxt")
        shutil.copy(PEERS / "triton" / "model.py", version / "model.py")
        (version / "model.onnx").symlink_to(repository / source / "1" / "model.onnx")
    grpc_port = free_port()
    env = {**os.environ, "CNNSERVE_ROOT": str(SERVER_ROOT),
           "LD_LIBRARY_PATH": ":".join(filter(None, [facts["libdir"], str(site / "nvidia_pytriton.libs"),
                                                     os.environ.get("LD_LIBRARY_PATH")])),
           "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}      # the stub's Python finds the venv through PATH
    log = run_dir / "triton.log"
    process = subprocess.Popen(
        [str(dist / "bin" / "tritonserver"), "--model-repository", str(home / "repository"),
         "--backend-directory", str(home / "backends"), "--cache-directory", str(dist / "caches"),
         "--grpc-port", str(grpc_port), "--allow-metrics", "false", "--log-verbose", "0",
         *(["--allow-http", "true", "--http-port", str(http_port)] if http_port else ["--allow-http", "false"])],
        env=env, cwd=home, stdout=log.open("w"), stderr=subprocess.STDOUT)
    target = f"127.0.0.1:{grpc_port}"
    wait_ready("Triton", target, process, log, models=tuple(models))
    return Running("Triton", target, process, f"{server_version(target)} (nvidia-pytriton {facts['pytriton']})",
                   "Python backend, 1 instance (KIND_CPU), dynamic batching max_batch_size 64, no queue delay")


def summary_table(results: dict, labels: list[str]) -> list[str]:
    def cell(label, case, level, what="req"):
        m = results.get((label, case, level))
        if m is None:
            return ""
        value = m.images_per_s if what == "img" else m.requests_per_s
        batch = "" if m.mean_batch is None or m.images_per_request > 1 else f" (batch {m.mean_batch:.1f})"
        return f"{value:,.0f}{batch}" if level > 1 or what == "img" else f"{value:,.0f}"
    lines = ["| measurement | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for title, case, level, what in [
            ("lenet_bn, 1 image, c1: req/s", "lenet_bn", 1, "req"), ("lenet_bn, 1 image, c16: req/s", "lenet_bn", 16, "req"),
            ("lenet_bn, 1 image, c64: req/s", "lenet_bn", 64, "req"),
            ("lenet_bn, 64 images/request, c4: images/s", "lenet_bn x64", 4, "img"),
            ("resnet18, 1 image, c1: req/s", "resnet18", 1, "req"), ("resnet18, 1 image, c32: images/s", "resnet18", 32, "img")]:
        lines.append(f"| {title} | " + " | ".join(cell(label, case, level, what) for label in labels) + " |")
    for title, case, level in [("lenet_bn c16 p50 / p99 ms", "lenet_bn", 16),
                               ("lenet_bn c1 server CPU ms/request", "lenet_bn", 1)]:
        row = []
        for label in labels:
            m = results.get((label, case, level))
            if m is None:
                row.append("")
            elif "CPU" in title:
                row.append("n/a" if m.server_cpu_ms_per_request is None else f"{m.server_cpu_ms_per_request:.2f}")
            else:
                row.append(f"{m.p50_ms:.2f} / {m.p99_ms:.2f}")
        lines.append(f"| {title} | " + " | ".join(row) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers-venv", type=Path, default=RESULTS / "venv-peers",
                        help="the virtual environment with mlserver and nvidia-pytriton "
                             "(default: bench/results/venv-peers; install: bench/peers/README.md)")
    parser.add_argument("--server-root", type=Path, default=ROOT, help="the checkout whose cnnserve server runs")
    parser.add_argument("--servers", default=",".join(SERVERS), help="which of cnnserve,mlserver,triton")
    parser.add_argument("--cnnserve-workers", default="1",
                        help="comma-separated `--workers` settings; cnnserve runs once per setting (e.g. 1,2)")
    parser.add_argument("--no-echo", action="store_true", help="leave out the bare grpcio echoes")
    parser.add_argument("--label", default="main", help="names the output files: bench/results/peers-<label>.*")
    parser.add_argument("--runs", type=int, default=3, help="interleaved rounds; each measurement is the median")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per h2load run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of h2load before each run, not measured")
    args = parser.parse_args()
    servers = args.servers.split(",")
    repository = ROOT / "model_repository"            # one set of model files for all three servers
    run_dir = RESULTS / f"peers-{args.label}"
    run_dir.mkdir(parents=True, exist_ok=True)
    facts = venv_facts(args.peers_venv) if {"mlserver", "triton"} & set(servers) else {}
    running: list[Running] = []
    echoes: list[tuple[str, subprocess.Popen, str]] = []
    spawned: list[SpawnedServer] = []
    try:
        for workers in (int(w) for w in args.cnnserve_workers.split(",")) if "cnnserve" in servers else ():
            flags = ["--workers", str(workers)] if workers > 1 else []
            name = f"cnnserve {' '.join(flags)}".strip()
            cnnserve = SpawnedServer(repository, ["--models", ",".join(MODELS), *flags],
                                     log_path=run_dir / f"{name.replace(' ', '')}.log")
            spawned.append(cnnserve)
            commit = subprocess.run(["git", "-C", str(SERVER_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip()
            running.append(Running(name, cnnserve.target, cnnserve.process,
                                   f"{server_version(cnnserve.target)} ({SERVER_ROOT}, commit {commit})",
                                   f"python -m server {' '.join(flags) or 'defaults'}; batching from config.pbtxt "
                                   "(64 images, 2 ms)"))
        if "mlserver" in servers:
            running.append(start_mlserver(args.peers_venv, facts, repository, run_dir))
        if "triton" in servers:
            running.append(start_triton(args.peers_venv, facts, repository, run_dir))
        if not args.no_echo:
            for label, script, root in [("echo sync", SERVER_ROOT / "bench" / "echo_server.py", SERVER_ROOT),
                                        ("echo aio", ROOT / "bench" / "echo_aio_server.py", ROOT)]:
                process, target = start_echo(script, root)
                echoes.append((label, process, target))
        cases = []
        for label, process, target in echoes:
            ep = h2load.endpoint(label, "echo", target, "lenet_bn", 1, pid=process.pid, echo_of="kserve")
            cases += [(label, "lenet_bn", ep, level) for level in ECHO_LEVELS]     # echoes the lenet_bn ModelInfer bytes
        for server in running:
            for case, model, images, level in ROWS:
                ep = h2load.endpoint(server.name, "kserve", server.target, model, images, pid=server.process.pid,
                                     statistics=server.statistics)
                cases.append((server.name, case, ep, level))
        print(f"{len(cases)} measurements x {args.runs} interleaved rounds of {args.duration:g} s")
        runs: dict[tuple[str, str, int], list[h2load.Measurement]] = {}
        for round_index in range(args.runs):
            for label, case, ep, level in cases:
                m = h2load.measure(ep, level, args.duration, args.warmup)
                runs.setdefault((label, case, level), []).append(m)
                print(f"  round {round_index + 1}/{args.runs} {label:<9} {case:<13} c{level:<3} {m.requests_per_s:>8,.0f} req/s "
                      f"{m.images_per_s:>8,.0f} img/s p50 {m.p50_ms:6.2f} p99 {m.p99_ms:7.2f} ms batch "
                      f"{'n/a' if m.mean_batch is None else f'{m.mean_batch:.2f}'}", flush=True)
        results = {key: h2load.median_measurement(value) for key, value in runs.items()}
    finally:
        for server in running:
            server.stop()
        for cnnserve in spawned:
            cnnserve.channel.close()
        for _, process, _ in echoes:
            process.terminate()
            process.wait(10)
    labels = [label for label, _, _ in echoes] + [s.name for s in running]
    import onnxruntime
    lines = [f"peers-{args.label}: KServe v2 gRPC ModelInfer (UINT8 raw_input_contents) for all servers; h2load "
             f"{args.duration:g} s runs (+{args.warmup:g} s warm-up), c connections x 1 stream, median of {args.runs} "
             f"interleaved round(s); {time.strftime('%Y-%m-%d %H:%M')}", ""]
    lines += [f"- {s.name}: {s.version}; {s.settings}" for s in running]
    lines += [f"- onnxruntime {onnxruntime.__version__} (cnnserve), {facts.get('onnxruntime', '-')} (peers venv); grpcio "
              f"{grpc.__version__} (cnnserve, echoes), {facts.get('grpcio', '-')} (MLServer); Python {sys.version.split()[0]} "
              f"(cnnserve), {facts.get('python', '-')} (peers venv)", ""]
    lines += summary_table(results, labels)
    lines += ["", "| server | request | concurrency | req/s | images/s | p50 ms | p99 ms | mean batch | server CPU ms/req | "
              "failed |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (label, case, level), m in results.items():
        batch = "n/a" if m.mean_batch is None else f"{m.mean_batch:.2f}"
        cpu = "n/a" if m.server_cpu_ms_per_request is None else f"{m.server_cpu_ms_per_request:.3f}"
        failed = m.http_failed + (m.grpc_failed or 0) + m.no_message
        lines.append(f"| {label} | {case} | {level} | {m.requests_per_s:,.0f} | {m.images_per_s:,.0f} | {m.p50_ms:.2f} | "
                     f"{m.p99_ms:.2f} | {batch} | {cpu} | {failed} |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    (RESULTS / f"peers-{args.label}.md").write_text(text)
    write_json(f"peers-{args.label}", {"servers": [{"name": s.name, "version": s.version, "settings": s.settings}
                                                   for s in running], "venv": facts,
                                       "measurements": [{"server": k[0], "case": k[1], "level": k[2], **m.row()}
                                                        for k, m in results.items()]})


if __name__ == "__main__":
    main()
