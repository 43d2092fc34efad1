"""The same load through cnnserve.v1, KServe v2 gRPC and KServe v2 HTTP on one server: cost per request against cnnserve.v1.

    python bench/protocols.py [--model lenet_bn] [--concurrency 1,16] [--batch 1] [--rounds 3] [--seconds 3]

One server (the shipped default repository, with --http-port) and the load generator's three
protocols in interleaved rounds: cnnserve.v1 Classify, KServe v2 ModelInfer over gRPC, KServe v2
infer over HTTP (binary tensors). Per protocol and concurrency: the median over the rounds of
requests/s and p50. Target: KServe v2 gRPC costs at most 1.2× cnnserve.v1 per request.
"""
import argparse
import statistics

from common import ROOT, write_json

from client.loadtest import PROTOCOLS, Level, Workload, run_level
from client.spawn import SpawnedServer

TARGET_KSERVE_GRPC = 1.2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet_bn")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    server = SpawnedServer(ROOT / "model_repository", ["--models", args.model], with_http=True)
    rows = []
    try:
        for concurrency in map(int, args.concurrency.split(",")):
            runs = {protocol: [] for protocol in PROTOCOLS}
            for _ in range(args.rounds):
                for protocol in PROTOCOLS:
                    target = server.http_target if protocol == "kserve-http" else server.target
                    workload = Workload(target, args.model, batch=args.batch, warmup_s=1, duration_s=args.seconds,
                                        processes=1, protocol=protocol)
                    runs[protocol].append(run_level(workload, Level(concurrency=concurrency), live=False))
            base = statistics.median(r["requests_per_s"] for r in runs["cnnserve"])
            for protocol, results in runs.items():
                rate = statistics.median(r["requests_per_s"] for r in results)
                rows.append({"protocol": protocol, "concurrency": concurrency, "requests_per_s": rate,
                             "p50_ms": statistics.median(r["p50_ms"] for r in results),
                             "failed": sum(sum(r["failed"].values()) for r in results),
                             "cost_ratio_to_cnnserve": base / rate})
    finally:
        server.stop()
    print(f"{args.model}, batch {args.batch}, {args.rounds} interleaved rounds of {args.seconds:g} s, 1 client process")
    print(f"{'protocol':<12} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'failed':>6} {'cost vs cnnserve':>17}")
    for r in rows:
        verdict = ""
        if r["protocol"] == "kserve-grpc":
            verdict = "  pass" if r["cost_ratio_to_cnnserve"] <= TARGET_KSERVE_GRPC else \
                f"  MISS by {r['cost_ratio_to_cnnserve'] - TARGET_KSERVE_GRPC:.2f}×"
        print(f"{r['protocol']:<12} {r['concurrency']:>4} {r['requests_per_s']:>9.1f} {r['p50_ms']:>8.2f} "
              f"{r['failed']:>6} {r['cost_ratio_to_cnnserve']:>16.2f}×{verdict}")
    write_json("protocols", rows)


if __name__ == "__main__":
    main()
