"""What any Python gRPC server pays around a 5 ms computation on this machine (the floor under bench/server_overhead.py).

    python bench/grpc_floor.py [--model resnet18]

One bare gRPC server (same message limits and thread pool as cnnserve, no cnnserve code) with
a generic handler that (a) echoes, (b) sleeps 5 ms, (c) calls ONNX Runtime on the model, p50 of
sequential calls from a client in this process, next to ORT called directly.
"""
import argparse
import statistics
import time
from concurrent import futures

import grpc
import numpy as np
import onnxruntime as ort
from common import random_init_repository, write_json

from client.channel import message_limits
from server.app import ServerConfig


def p50_ms(fn, n: int = 400) -> float:
    for _ in range(20):
        fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    args = parser.parse_args()
    repository = random_init_repository([args.model])
    session = ort.InferenceSession(str(repository / args.model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    image = np.zeros((1, 1, 28, 28), np.uint8)
    work = {"echo": lambda: None, "sleep 5 ms": lambda: time.sleep(0.005),
            "ORT run": lambda: session.run(["logits"], {"image": image})}
    mode = {"now": "echo"}

    def handler(request, context):
        work[mode["now"]]()
        return request

    config = ServerConfig()
    server = grpc.server(futures.ThreadPoolExecutor(64), options=message_limits(config.max_message_mb))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "bench.Floor", {"Call": grpc.unary_unary_rpc_method_handler(handler)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    call = grpc.insecure_channel(f"127.0.0.1:{port}").unary_unary("/bench.Floor/Call")
    payload = bytes(900)
    rows = {}
    for name, fn in work.items():
        mode["now"] = name
        rows[name] = {"direct_p50_ms": p50_ms(fn), "through_grpc_p50_ms": p50_ms(lambda: call(payload))}
    server.stop(0)
    echo = rows["echo"]["through_grpc_p50_ms"]
    print(f"{'handler does':<12} {'direct p50':>11} {'via gRPC p50':>13} {'added':>8} {'added/echo':>11}")
    for name, r in rows.items():
        r["added_ms"] = r["through_grpc_p50_ms"] - r["direct_p50_ms"]
        print(f"{name:<12} {r['direct_p50_ms']:>9.3f}ms {r['through_grpc_p50_ms']:>11.3f}ms {r['added_ms']:>6.3f}ms "
              f"{r['added_ms'] / echo:>10.2f}x")
    write_json("grpc_floor", rows)


if __name__ == "__main__":
    main()
