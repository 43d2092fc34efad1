"""cnnserve against Triton Inference Server, both measured by Triton's own load generator, perf_analyzer.

    python bench/perf_vs_triton.py [--rounds 3] [--interval-ms 3000] [--rows KEY,...] [--outputs logits,maps]
                                   [--servers cnnserve,cnnserve-w2,triton,echo] [--peers-venv DIR] [--perf-analyzer PATH]

  --rounds        interleaved rounds: round i runs every row on every server before round i+1; figures are medians
  --interval-ms   perf_analyzer's time window; each run is 3 windows after a few warm-up requests (stability check
                  off: --stability-percentage 999; --max-trials 10 only lets it go on past a window with no
                  answer) and reports their throughput, p50 and p99; a run that fails runs once more with windows
                  twice as long (the JSON keeps the first error)
  --rows          row keys (default all): grpc-c1 grpc-c16 grpc-c64 http-c16 http-c64 x64-c4 resnet18-c1
                  resnet18-c32 stream-c16; each runs once per --outputs
  --outputs       logits (cnnserve `NAME.logits`, Triton `NAME`: metadata lists the logits alone, and perf_analyzer
                  asks for every output the metadata lists) and maps (cnnserve `NAME`, Triton `NAME_maps`: every
                  feature map); configs in bench/peers/triton/
  --servers       cnnserve (one process), cnnserve-w2 (`--workers 2`), triton (tritonserver 2.51.0 from the
                  nvidia-pytriton wheel, Python backend bench/peers/triton/model.py on cnnserve's ONNX Runtime
                  session options; install: bench/peers/README.md), echo (bench/echo_kserve_server.py: the bare
                  grpc.aio and uvicorn floors, on the lenet_bn single-image gRPC and HTTP rows only)
  --peers-venv    the environment with nvidia-pytriton (default bench/results/venv-peers)
  --perf-analyzer its chroot wrapper (default: what `bash ../shared/perf_analyzer/setup.sh` prints)

Every non-streaming row uses `--async`; the stream row uses `--streaming` (KServe ModelStreamInfer). lenet_bn and
resnet18 are the shipped models (model_repository/), the same files for every server. Ratios are each server over
Triton in the same run (for p50, Triton's over the server's: above 1 is faster); targets as `ROWS` sets them, PASS/MISS
per cnnserve setting. MLServer is not here: perf_analyzer stops at `failed to get model config: Method not found!`
(MLServer 1.7.1 has no ModelConfig), so bench/peers.py compares it under h2load. Prints a Markdown table and writes
bench/results/perf-vs-triton.json and .md, the servers' logs in bench/results/perf-vs-triton/.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import peers
from common import RESULTS, ROOT, write_json
from peers import SpawnedServer, free_port

REPOSITORY = ROOT / "model_repository"
OUT = RESULTS / "perf-vs-triton"
NAMES = {("cnnserve", "logits"): "{}.logits", ("cnnserve", "maps"): "{}",
         ("triton", "logits"): "{}", ("triton", "maps"): "{}_maps"}
LABELS = {"cnnserve": "cnnserve", "cnnserve-w2": "cnnserve --workers 2", "triton": "Triton", "echo": "echo"}
SHORT = {"cnnserve": "1 process", "cnnserve-w2": "2 workers"}


@dataclass(frozen=True)
class Row:
    key: str
    model: str
    protocol: str          # grpc | http
    mode: str              # --async | --streaming
    batch: int
    concurrency: int
    target: float | None   # least ratio to Triton; None: reported without a verdict
    echo: bool = False     # the bare echo runs it too (single-image lenet_bn)


ROWS = [Row("grpc-c1", "lenet_bn", "grpc", "--async", 1, 1, None, echo=True),
        Row("grpc-c16", "lenet_bn", "grpc", "--async", 1, 16, 0.8, echo=True),
        Row("grpc-c64", "lenet_bn", "grpc", "--async", 1, 64, 0.8, echo=True),
        Row("http-c16", "lenet_bn", "http", "--async", 1, 16, 0.8, echo=True),
        Row("http-c64", "lenet_bn", "http", "--async", 1, 64, 0.8, echo=True),
        Row("x64-c4", "lenet_bn", "grpc", "--async", 64, 4, 1.0),
        Row("resnet18-c1", "resnet18", "grpc", "--async", 1, 1, 1.0),
        Row("resnet18-c32", "resnet18", "grpc", "--async", 1, 32, 1.0),
        Row("stream-c16", "lenet_bn", "grpc", "--streaming", 1, 16, 1.0)]
TITLES = {"grpc-c1": "lenet_bn gRPC c1: req/s", "grpc-c16": "lenet_bn gRPC c16: req/s",
          "grpc-c64": "lenet_bn gRPC c64: req/s", "http-c16": "lenet_bn HTTP c16: req/s",
          "http-c64": "lenet_bn HTTP c64: req/s", "x64-c4": "lenet_bn 64 images/request gRPC c4: images/s",
          "resnet18-c1": "resnet18 gRPC c1: req/s", "resnet18-c32": "resnet18 gRPC c32: req/s",
          "stream-c16": "lenet_bn gRPC streaming c16: req/s"}


@dataclass
class Endpoint:
    name: str
    grpc: str
    http: str | None
    stop: callable
    version: str = ""


def perf_analyzer_path(given: str | None) -> str:
    if given:
        return given
    setup = subprocess.run(["bash", str(ROOT.parent / "shared" / "perf_analyzer" / "setup.sh")], capture_output=True,
                           text=True, check=True, timeout=1200)
    return setup.stdout.split()[-1]


def measure(pa: str, ep: Endpoint, model: str, row: Row, interval_ms: int) -> dict:
    """One perf_analyzer run: {"throughput" (inferences, i.e. images/s), "p50_ms", "p99_ms"}, or {"error"}."""
    name = f"pvt-{uuid.uuid4().hex[:8]}.csv"
    csv_file = Path(pa).parent / "tmp" / name             # the chroot's /tmp, where perf_analyzer writes it
    url = ep.grpc if row.protocol == "grpc" else ep.http
    warmup = max(2 * row.concurrency, 32 if row.batch == 1 else 4)
    command = [pa, "-m", model, "-i", row.protocol, "-u", url, "--measurement-interval", str(interval_ms),
               "--stability-percentage", "999", "--max-trials", "10", "--warmup-request-count", str(warmup),
               "-b", str(row.batch), "--concurrency-range", str(row.concurrency), row.mode, "-f", f"/tmp/{name}"]
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=10 * interval_ms / 1e3 + 120)
        if run.returncode != 0 or not csv_file.exists():
            return {"error": f"exit {run.returncode}: {(run.stdout + run.stderr).strip()[-400:]}"}
        line = next(csv.DictReader(csv_file.open()))
    except subprocess.TimeoutExpired:
        return {"error": "perf_analyzer timed out"}
    finally:
        csv_file.unlink(missing_ok=True)
    return {"throughput": float(line["Inferences/Second"]), "p50_ms": int(line["p50 latency"]) / 1e3,
            "p99_ms": int(line["p99 latency"]) / 1e3}


def start_servers(names: list[str], venv: Path) -> tuple[list[Endpoint], dict]:
    OUT.mkdir(parents=True, exist_ok=True)
    endpoints, facts = [], {}
    try:
        for name in names:
            if name.startswith("cnnserve"):
                flags = ["--workers", "2"] if name == "cnnserve-w2" else []
                # None: the server's default repository, REPOSITORY, whose first start builds resnet18's file
                s = SpawnedServer(None, ["--models", "lenet_bn,resnet18", *flags], with_http=True,
                                  log_path=OUT / f"{name}.log")
                commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                                        capture_output=True, text=True).stdout.strip()
                endpoints.append(Endpoint(name, s.target, s.http_target, s.stop,
                                          f"{peers.server_version(s.target)} (commit {commit}) {' '.join(flags)}".strip()))
            elif name == "triton":
                if not (REPOSITORY / "resnet18" / "1" / "model.onnx").exists():
                    raise SystemExit("no model_repository/resnet18/1/model.onnx: run with cnnserve first in --servers "
                                     "(its first start builds it)")
                facts = peers.venv_facts(venv)
                http_port = free_port()
                models = {NAMES["triton", o].format(m): m for m in ("lenet_bn", "resnet18") for o in ("logits", "maps")}
                t = peers.start_triton(venv, facts, REPOSITORY, OUT, models=models, http_port=http_port)
                endpoints.append(Endpoint(name, t.target, f"127.0.0.1:{http_port}", t.stop, t.version))
            elif name == "echo":
                targets, processes = {}, []
                for protocol in ("grpc", "http"):
                    p = subprocess.Popen([sys.executable, str(ROOT / "bench" / "echo_kserve_server.py"), "--protocol",
                                          protocol], stdout=subprocess.PIPE, text=True)
                    processes.append(p)
                    targets[protocol] = f"127.0.0.1:{p.stdout.readline().strip()}"
                endpoints.append(Endpoint(name, targets["grpc"], targets["http"],
                                          lambda ps=processes: [(p.terminate(), p.wait(10)) for p in ps],
                                          "bench/echo_kserve_server.py (grpc.aio; uvicorn h11 + Starlette)"))
    except BaseException:
        stop_all(endpoints)
        raise
    return endpoints, facts


def stop_all(endpoints: list[Endpoint]) -> None:
    for ep in endpoints:
        try:
            ep.stop()
        except Exception as error:       # noqa: BLE001 - stop the others whatever this one did
            print(f"stopping {ep.name}: {error}", file=sys.stderr)


def fmt(value: float | None, p50: bool = False, failed: bool = False) -> str:
    return ("failed" if failed else "") if value is None else f"{value:.2f} ms" if p50 else f"{value:,.0f}"


def table(rows: list[Row], outputs: list[str], servers: list[str], medians: dict,
          failed: set) -> tuple[list[str], list[dict]]:
    """Markdown lines and JSON records; `failed`: the (server, row, outputs) whose every run failed."""
    compared = [s for s in servers if s.startswith("cnnserve")]
    lines = ["| row | outputs | " + " | ".join(LABELS[s] for s in servers) + " | "
             + " | ".join(f"{SHORT[s]} / Triton" for s in compared) + " | target | "
             + " | ".join(SHORT[s] for s in compared) + " |",
             "|---|---|" + "---:|" * len(servers) + "---:|" * len(compared) + "---|" + "---|" * len(compared)]
    records = []
    for row in rows:
        for out in outputs:
            for p50 in (False, True) if row.key == "resnet18-c1" else (False,):
                def value(server):
                    m = medians.get((server, row.key, "any" if server == "echo" else out))
                    if m is None:
                        return None
                    return m["p50_ms"] if p50 else m["throughput"] / (1 if row.key == "x64-c4" else row.batch)
                values = {s: value(s) for s in servers}
                triton = values.get("triton")
                ratios = {s: None if not (values[s] and triton) else (triton / values[s] if p50 else values[s] / triton)
                          for s in compared}
                verdicts = {s: "" if row.target is None or ratios[s] is None else
                            "PASS" if ratios[s] >= row.target else "MISS" for s in compared}
                title = "resnet18 gRPC c1: p50" if p50 else TITLES[row.key]
                cells = [fmt(values[s], p50, (s, row.key, "any" if s == "echo" else out) in failed) for s in servers]
                lines.append(f"| {title} | {out} | " + " | ".join(cells) + " | "
                             + " | ".join("" if ratios[s] is None else f"{ratios[s]:.2f}×" for s in compared) + " | "
                             + ("" if row.target is None else f"≥ {row.target:g}") + " | "
                             + " | ".join(verdicts[s] for s in compared) + " |")
                records.append({"row": row.key, "measure": "p50_ms" if p50 else "rate", "outputs": out,
                                "title": title, "values": values, "ratios": ratios, "target": row.target,
                                "verdicts": verdicts})
    return lines, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval-ms", type=int, default=3000)
    parser.add_argument("--rows", default=",".join(r.key for r in ROWS))
    parser.add_argument("--outputs", default="logits,maps")
    parser.add_argument("--servers", default="cnnserve,cnnserve-w2,triton,echo")
    parser.add_argument("--peers-venv", type=Path, default=RESULTS / "venv-peers")
    parser.add_argument("--perf-analyzer")
    args = parser.parse_args()
    keys, outputs, servers = args.rows.split(","), args.outputs.split(","), args.servers.split(",")
    unknown = (set(keys) - {r.key for r in ROWS}) | (set(outputs) - {"logits", "maps"}) | (set(servers) - set(LABELS))
    if unknown:
        raise SystemExit(f"unknown --rows/--outputs/--servers value(s): {', '.join(sorted(unknown))}")
    rows = [r for r in ROWS if r.key in keys]
    pa = perf_analyzer_path(args.perf_analyzer)
    pa_version = " ".join(p.name.removesuffix(".dist-info").replace("-", " ")
                          for p in (Path(pa).parent / "pa").glob("perf_analyzer-*.dist-info")) or pa
    endpoints, facts = start_servers(servers, args.peers_venv)
    runs: list[tuple[Endpoint, Row, str, str]] = []           # (server, row, outputs, model name)
    for row in rows:
        for ep in endpoints:
            if ep.name == "echo":
                if row.echo:
                    runs.append((ep, row, "any", row.model))
                continue
            runs += [(ep, row, out, NAMES["triton" if ep.name == "triton" else "cnnserve", out].format(row.model))
                     for out in outputs]
    print(f"{len(runs)} perf_analyzer runs x {args.rounds} rounds, about "
          f"{len(runs) * args.rounds * (3 * args.interval_ms / 1e3 + 1.5) / 60:.0f} min; {pa_version}", flush=True)
    measured: dict[tuple[str, str, str], list[dict]] = {}
    started = time.monotonic()
    try:
        for round_index in range(args.rounds):
            for i, (ep, row, out, model) in enumerate(runs):
                m = measure(pa, ep, model, row, args.interval_ms)
                if "error" in m:            # e.g. a window with no answer on a busy machine: once more, twice as long
                    print(f"  {LABELS[ep.name]} {row.key} {out}: {m['error']}\n  again with {2 * args.interval_ms} ms windows",
                          flush=True)
                    m = {**measure(pa, ep, model, row, 2 * args.interval_ms), "retried": m["error"]}
                measured.setdefault((ep.name, row.key, out), []).append(m)
                result = m.get("error") or (f"{m['throughput'] / row.batch:>9,.0f} req/s {m['throughput']:>9,.0f} img/s "
                                            f"p50 {m['p50_ms']:7.2f} p99 {m['p99_ms']:7.2f} ms")
                print(f"[{round_index + 1}/{args.rounds} {i + 1:>2}/{len(runs)} {time.monotonic() - started:5.0f} s] "
                      f"{LABELS[ep.name]:<20} {row.key:<12} {out:<6} {model:<16} {result}", flush=True)
    finally:
        stop_all(endpoints)
    medians = {}
    for key, ms in measured.items():
        good = [m for m in ms if "error" not in m]
        if good:
            medians[key] = {f: statistics.median(m[f] for m in good) for f in ("throughput", "p50_ms", "p99_ms")}
    lines, records = table(rows, outputs, servers, medians, set(measured) - set(medians))
    import onnxruntime
    head = [f"{pa_version} against cnnserve and Triton on this machine, KServe v2, shipped lenet_bn "
            f"and resnet18; {args.interval_ms} ms windows x 3 per run, median of {args.rounds} interleaved round(s); "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", ""]
    head += [f"- {LABELS[ep.name]}: {ep.version}" for ep in endpoints]
    head += [f"- onnxruntime {onnxruntime.__version__} (cnnserve), {facts.get('onnxruntime', '-')} (Triton's venv); "
             "MLServer: not measurable with perf_analyzer (no ModelConfig), see bench/peers.py", ""]
    text = "\n".join(head + lines) + "\n"
    print("\n" + text)
    (RESULTS / "perf-vs-triton.md").write_text(text)
    write_json("perf-vs-triton", {
        "settings": {"rounds": args.rounds, "interval_ms": args.interval_ms, "rows": keys, "outputs": outputs,
                     "servers": servers, "perf_analyzer": pa_version},
        "servers": {ep.name: ep.version for ep in endpoints}, "peers_venv": facts, "rows": records,
        "runs": [{"server": k[0], "row": k[1], "outputs": k[2], "rounds": v} for k, v in measured.items()]})


if __name__ == "__main__":
    main()
