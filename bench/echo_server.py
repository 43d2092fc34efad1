"""A bare gRPC echo service on the same settings as cnnserve (message limits, thread pool), for
measuring what gRPC alone costs. Prints its port, then serves until SIGTERM.

    python bench/echo_server.py [--port 0] [--processes 1]
"""
import argparse
import signal
import sys
import threading
from concurrent import futures

import grpc
from common import start_copies  # (also puts the project on sys.path)

from client.channel import message_limits
from server.app import ServerConfig

METHOD = "/cnnserve.bench.Echo/Echo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--processes", type=int, default=1, help="processes sharing the port, like --workers")
    args = parser.parse_args()
    config = ServerConfig()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64),
                         options=message_limits(config.max_message_mb))
    echo = grpc.unary_unary_rpc_method_handler(lambda request, context: request)   # bytes in, same bytes out
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("cnnserve.bench.Echo", {"Echo": echo})])
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    copies = start_copies(__file__, port, args.processes - 1)
    print(port, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    for copy in copies:
        copy.terminate()
    server.stop(1).wait()


if __name__ == "__main__":
    sys.exit(main())
