"""A bare grpc.aio echo service (asyncio, one thread): the asyncio counterpart of `echo_server.py`, with
the same method and message limits, for measuring what gRPC alone costs. Prints its port, then
serves until SIGTERM. Imports nothing from the project (bench/common only), so it runs beside any version of it.

    python bench/echo_aio_server.py [--port 0] [--max-message-mb 64] [--processes 1]
"""
import argparse
import asyncio
import signal

import grpc
from common import start_copies

SERVICE, METHOD = "cnnserve.bench.Echo", "Echo"    # /cnnserve.bench.Echo/Echo, as echo_server.py


async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def serve(port: int, max_message_mb: int, processes: int) -> None:
    limit = max_message_mb * 2**20
    server = grpc.aio.server(options=[("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)])
    handler = grpc.unary_unary_rpc_method_handler(echo)     # no (de)serializers: bytes in, the same bytes out
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler})])
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    copies = start_copies(__file__, bound, processes - 1)
    print(bound, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for copy in copies:
        copy.terminate()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-message-mb", type=int, default=64)
    parser.add_argument("--processes", type=int, default=1, help="processes sharing the port, like --workers")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.max_message_mb, args.processes))


if __name__ == "__main__":
    main()
