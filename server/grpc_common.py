"""What the gRPC adapters (cnnserve.v1 in `server/service.py`, KServe v2 in `server/kserve.py`) share:
`ServiceError`s mapped to status codes with one log line per refusal (clients never see a stack
trace), request bytes parsed by us rather than by grpcio, handler registration, and deadlines."""
from __future__ import annotations

import functools
import logging
import time

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass

from server.errors import InvalidArgument, ServiceError

log = logging.getLogger(__name__)
INTERNAL_ERROR = "internal server error; the server log has the details"   # all a client learns of a bug


def grpc_errors(method):
    """Turn ServiceErrors into gRPC statuses, and anything unexpected into INTERNAL with a logged trace."""

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except ServiceError as error:
            log.warning("%s refused (%s): %s", method.__name__, error.status, error.message)
            await context.abort(grpc.StatusCode[error.status], error.message)
        except Exception:  # the RPC boundary: log the trace here, send the client a status
            log.exception("%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_ERROR)

    return wrapper


def add_servicer(server: grpc.aio.Server, servicer, service: ServiceDescriptor) -> None:
    """Register the methods of `servicer`, parsing unary request bytes here rather than in grpcio: bytes
    that are not a valid message are the client's mistake (INVALID_ARGUMENT, one log line), where
    grpcio answers INTERNAL "Exception deserializing request!" and logs a traceback. A bidirectional
    method (KServe's ModelStreamInfer) gets the raw bytes of each message and parses them itself
    (`parse_message`): there a message that does not parse is one refused request, not the end of the
    stream. One-way streaming methods (there are none) stay unregistered: UNIMPLEMENTED."""
    handlers = {}
    for method in service.methods:
        request_class, response_class = GetMessageClass(method.input_type), GetMessageClass(method.output_type)
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                getattr(servicer, method.name), response_serializer=response_class.SerializeToString)
            continue
        if method.client_streaming or method.server_streaming:
            continue
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            parsing(getattr(servicer, method.name), request_class, f"{service.name}.{method.name}"),
            response_serializer=response_class.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


class GenericHandlersOnly:
    """The server as a generated `add_*Servicer_to_server` should see it: generic handlers only. grpc.aio keeps
    one pending request per *registered* method and, for every call it accepts, waits on all of them again
    (`asyncio.wait` over the set, a Task re-armed per call), a cost that grows with the number of methods and
    shows in a profile of the event loop (`python bench/h2load.py --profile`; bench/HISTORY.md has the run).
    A generic handler is looked up per call by name instead."""

    def __init__(self, server: grpc.aio.Server):
        self.server = server

    def add_generic_rpc_handlers(self, handlers) -> None:
        self.server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        pass    # the generic handler added beside it serves these methods


def parsing(method, request_class, name: str):
    async def handle(raw: bytes, context: grpc.aio.ServicerContext):
        try:
            request = parse_message(raw, request_class)
        except InvalidArgument as error:
            log.warning("%s refused (INVALID_ARGUMENT): %s", name, error.message)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, error.message)
        return await method(request, context)
    return handle


def parse_message(raw: bytes, request_class):
    try:
        return request_class.FromString(raw)
    except DecodeError:
        raise InvalidArgument(f"the request ({len(raw):,} bytes) is not a valid "
                              f"{request_class.DESCRIPTOR.full_name} message") from None


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining
