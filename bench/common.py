"""Shared by the benchmarks: timing, a throwaway repository of random-init exports, result output."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def median_ms(fn: Callable[[], object], *, min_runs: int = 5, budget_s: float = 2.0, warmup: int = 2) -> float:
    """Median wall time of `fn` in ms: at least `min_runs` runs, more while within `budget_s`."""
    for _ in range(warmup):
        fn()
    times, start = [], time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < budget_s:
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
        if len(times) >= 10_000:
            break
    return statistics.median(times)


def random_init_repository(archs: list[str], directory: Path = RESULTS / "repository") -> Path:
    """Untrained exports (with all feature maps) of `archs`, made once and reused."""
    from export.onnx import export
    for arch in archs:
        if not (directory / arch / "1" / "model.onnx").exists():
            export(arch, directory, random_init=True, version=1)
    return directory


def write_json(name: str, payload) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {path.relative_to(ROOT)}")
    return path


def server_root() -> Path:
    """--server-root, read before the project is imported: which checkout's server (and session options) to use."""
    for i, arg in enumerate(sys.argv):
        if arg == "--server-root" and i + 1 < len(sys.argv):
            return Path(sys.argv[i + 1]).resolve()
        if arg.startswith("--server-root="):
            return Path(arg.split("=", 1)[1]).resolve()
    return ROOT


def start_echo(script: Path, root: Path, processes: int = 1) -> tuple[subprocess.Popen, str]:
    """Start a bare echo server script that prints its port (with `processes` > 1, it starts that many
    sharing the port, as `python -m server --workers`); return the first process and its target."""
    extra = ["--processes", str(processes)] if processes > 1 else []     # older checkouts' echoes lack the flag
    process = subprocess.Popen([sys.executable, str(script), *extra], cwd=root, stdout=subprocess.PIPE, text=True)
    port = process.stdout.readline().strip()
    if not port.isdigit():
        process.kill()
        raise RuntimeError(f"{script} did not start (printed {port!r})")
    return process, f"127.0.0.1:{port}"


def start_copies(script: str, port: int, count: int) -> list[subprocess.Popen]:
    """`count` more processes of an echo script serving the same port (SO_REUSEPORT, gRPC's default on Linux),
    children of the caller, so the CPU time measured over its process tree counts them."""
    return [subprocess.Popen([sys.executable, script, "--port", str(port)], stdout=subprocess.DEVNULL)
            for _ in range(count)]
