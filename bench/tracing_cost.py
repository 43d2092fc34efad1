"""What OpenTelemetry tracing costs a server: tracing off against on (sampled), side by side.

    python bench/tracing_cost.py [--model lenet_bn] [--protocol cnnserve] [--concurrency 1,16] \
        [--sample-ratios 1] [--rounds 3] [--seconds 4]

Servers at once on the shipped default repository: one `--trace off`, and one `--trace otlp
--trace-sample-ratio R` per ratio, exporting to a sink in this process (OTLP/HTTP on loopback that
reads each batch and answers 200, keeping nothing): the whole cost of making, encoding and sending
the spans (five per request), without a collector's own work on the machine. The load generator
(`client.loadtest`, one process, no traceparent sent: every request starts a trace, sampled at R)
runs against each in turn, in interleaved rounds whose order alternates. Per mode and concurrency:
the median over the rounds of requests/s, p50 and p99, and the ratio to off. A server whose span
queue overflowed (the SDK drops spans rather than grow without bound) is named below the table.
"""
import argparse
import os
import statistics
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from common import ROOT, write_json

from client.loadtest import PROTOCOLS, Level, Workload, run_level
from client.spawn import SpawnedServer

METRICS = ("requests_per_s", "p50_ms", "p99_ms")


class Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP collector that reads each export and keeps nothing but the count."""
    received = {"exports": 0, "bytes": 0}

    def do_POST(self):
        length = int(self.headers["Content-Length"])
        self.rfile.read(length)
        Sink.received["exports"] += 1
        Sink.received["bytes"] += length
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet_bn")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="cnnserve")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--sample-ratios", default="1", help="one traced server per ratio, beside the untraced one")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    sink = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{sink.server_address[1]}"     # the servers' too
    modes = {"off": ["--trace", "off"], **{f"on {ratio}": ["--trace", "otlp", "--trace-sample-ratio", ratio]
                                           for ratio in args.sample_ratios.split(",")}}
    servers = {}
    try:
        for mode, flags in modes.items():
            servers[mode] = SpawnedServer(ROOT / "model_repository", ["--models", args.model, *flags],
                                          with_http=args.protocol == "kserve-http")
        rows = [measure(servers, args, concurrency) for concurrency in map(int, args.concurrency.split(","))]
    finally:
        for server in servers.values():
            server.stop()
        sink.shutdown()
    dropped = [mode for mode, server in servers.items() if "dropping Span" in server.log()]
    print(f"{args.model}, {args.protocol}, batch 1, {args.rounds} interleaved rounds of {args.seconds:g} s per mode; "
          f"on: --trace otlp to a sink on loopback ({Sink.received['exports']} exports, "
          f"{Sink.received['bytes'] / 2**20:.1f} MiB received)")
    print(f"{'conc':>4} {'mode':>8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'failed':>6}   {'on/off: req/s':>13} "
          f"{'p50':>6} {'p99':>6}")
    for row in rows:
        for mode in modes:
            r = row[mode]
            ratios = "" if mode == "off" else "   " + " ".join(
                f"{r['ratio_to_off'][key]:>{width}.3f}×" for key, width in zip(METRICS, (12, 5, 5)))
            print(f"{row['concurrency']:>4} {mode:>8} {r['requests_per_s']:>9.1f} {r['p50_ms']:>8.2f} "
                  f"{r['p99_ms']:>8.2f} {r['failed']:>6}{ratios}")
    if dropped:
        print(f"span queue overflowed (spans dropped) in: {', '.join(dropped)}")
    write_json("tracing_cost", {"rows": rows, "sink": Sink.received, "dropped_spans": dropped})


def measure(servers: dict[str, SpawnedServer], args, concurrency: int) -> dict:
    runs = {mode: [] for mode in servers}
    for round_index in range(args.rounds):
        order = list(servers) if round_index % 2 == 0 else list(reversed(servers))
        for mode in order:
            server = servers[mode]
            target = server.http_target if args.protocol == "kserve-http" else server.target
            workload = Workload(target, args.model, warmup_s=1, duration_s=args.seconds, processes=1,
                                protocol=args.protocol)
            runs[mode].append(run_level(workload, Level(concurrency=concurrency), live=False))
    row = {"concurrency": concurrency}
    for mode, results in runs.items():
        row[mode] = {key: statistics.median(r[key] for r in results) for key in METRICS}
        row[mode]["failed"] = sum(sum(r["failed"].values()) for r in results)
        row[mode]["rounds"] = [{key: r[key] for key in METRICS} for r in results]
        row[mode]["ratio_to_off"] = {key: row[mode][key] / row["off"][key] for key in METRICS}
    return row


if __name__ == "__main__":
    main()
