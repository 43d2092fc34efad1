"""A bare grpc.aio echo service (asyncio, one thread): the asyncio counterpart of `echo_server.py`, with
the same method and message limits, for measuring what gRPC alone costs. Prints its port, then
serves until SIGTERM. Imports nothing from the project, so it runs beside any version of it.

    python bench/echo_aio_server.py [--port 0] [--max-message-mb 64]
"""
import argparse
import asyncio
import signal

import grpc

SERVICE, METHOD = "cnnserve.bench.Echo", "Echo"    # /cnnserve.bench.Echo/Echo, as echo_server.py


async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def serve(port: int, max_message_mb: int) -> None:
    limit = max_message_mb * 2**20
    server = grpc.aio.server(options=[("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)])
    handler = grpc.unary_unary_rpc_method_handler(echo)     # no (de)serializers: bytes in, the same bytes out
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler})])
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(bound, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-message-mb", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.max_message_mb))


if __name__ == "__main__":
    main()
