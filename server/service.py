"""The cnnserve.v1 gRPC adapter: `Classifier` messages to and from the data plane.

It converts protobuf to `InferRequest`s and `InferResult`s back, and maps `ServiceError`s to
status codes. Every refused request leaves one log line; clients never see a stack trace.
Handlers are coroutines on the server's event loop (`grpc.aio`), so a waiting call holds no thread.
"""
from __future__ import annotations

import functools
import logging
import math
import time

import grpc
import numpy as np
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass

from cnnserve.proto import classifier_pb2 as pb
from cnnserve.proto import classifier_pb2_grpc
from cnnserve.spec import LOGITS
from server.dataplane import DataPlane, EncodedImage, InferRequest, PixelImage
from server.errors import InvalidArgument, ServiceError, quote
from server.model_store import ServedModel

log = logging.getLogger(__name__)
ENCODINGS = {pb.FEATURE_ENCODING_FLOAT32: np.dtype("<f4"), pb.FEATURE_ENCODING_FLOAT16: np.dtype("<f2")}


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
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error; the server log has the details")

    return wrapper


def add_servicer(server: grpc.aio.Server, servicer, service: ServiceDescriptor) -> None:
    """Register the unary methods of `servicer`, parsing request bytes here rather than in grpcio: bytes
    that are not a valid message are the client's mistake (INVALID_ARGUMENT, one log line), where
    grpcio answers INTERNAL "Exception deserializing request!" and logs a traceback. Streaming
    methods (KServe's ModelStreamInfer) stay unregistered: UNIMPLEMENTED."""
    handlers = {}
    for method in service.methods:
        if method.client_streaming or method.server_streaming:
            continue
        request_class, response_class = GetMessageClass(method.input_type), GetMessageClass(method.output_type)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            parsing(getattr(servicer, method.name), request_class, f"{service.name}.{method.name}"),
            response_serializer=response_class.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


class GenericHandlersOnly:
    """The server as a generated `add_*Servicer_to_server` should see it: generic handlers only. grpc.aio keeps
    one pending request per *registered* method and, for every call it accepts, waits on all of them again
    (`asyncio.wait` over the set, a Task re-armed per call): with our ~18 methods that was ~15% of the event
    loop's time per Classify (cProfile under h2load). A generic handler is looked up per call by name instead."""

    def __init__(self, server: grpc.aio.Server):
        self.server = server

    def add_generic_rpc_handlers(self, handlers) -> None:
        self.server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        pass    # the generic handler added beside it serves these methods


def parsing(method, request_class, name: str):
    async def handle(raw: bytes, context: grpc.aio.ServicerContext):
        try:
            request = request_class.FromString(raw)
        except DecodeError:
            message = f"the request ({len(raw):,} bytes) is not a valid {request_class.DESCRIPTOR.full_name} message"
            log.warning("%s refused (INVALID_ARGUMENT): %s", name, message)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        return await method(request, context)
    return handle


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def image_input(image: pb.Image) -> EncodedImage | PixelImage | None:
    source = image.WhichOneof("source")
    if source == "encoded":
        return EncodedImage(image.encoded)
    if source == "tensor":
        tensor = image.tensor
        return PixelImage(tensor.shape, tensor.dtype, tensor.data)
    return None


def batch_input(request: pb.ClassifyRequest) -> np.ndarray | None:
    """The `batch` tensor as uint8 [N, ...], checked before any copy (the data plane checks the shape)."""
    if not request.HasField("batch"):
        return None
    if request.images:
        raise InvalidArgument("send images or batch, not both")
    tensor = request.batch
    shape = list(tensor.shape)
    if tensor.dtype != "uint8":
        raise InvalidArgument(f"batch.dtype {quote(tensor.dtype)} must be 'uint8'")
    if not 3 <= len(shape) <= 4 or any(d <= 0 for d in shape):
        raise InvalidArgument(f"batch.shape {shape[:8]} must be [N, side, side] or [N, 1, side, side]")
    count = math.prod(shape)
    if count != len(tensor.data):
        raise InvalidArgument(f"batch.shape {shape} needs {count:,} bytes; batch.data has {len(tensor.data):,}")
    return np.frombuffer(tensor.data, dtype=np.uint8).reshape(shape)


class ClassifierService(classifier_pb2_grpc.ClassifierServicer):
    def __init__(self, dataplane: DataPlane):
        self.dataplane = dataplane

    @grpc_errors
    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        dtype = ENCODINGS.get(request.feature_encoding)
        if dtype is None:
            raise InvalidArgument(f"feature_encoding {request.feature_encoding} is not one of {list(ENCODINGS)}")
        result = await self.dataplane.infer(InferRequest(
            model=request.model, version=request.version, top_k=request.top_k or 1, features=list(request.features),
            images=[image_input(image) for image in request.images], batch=batch_input(request),
            feature_itemsize=dtype.itemsize, deadline=deadline_of(context), caller=context.peer()))
        response = pb.ClassifyResponse(model=result.model, version=result.version, timings=pb.Timings(
            decode_ms=result.decode_s * 1e3, queue_ms=result.queue_s * 1e3, compute_ms=result.compute_s * 1e3,
            batch_size=result.batch_size))
        logits, labels = result.outputs[LOGITS].tolist(), result.labels    # Python floats: cheaper to copy out
        for i, (classes, probabilities) in enumerate(zip(result.top_indices.tolist(),
                                                         result.top_probabilities.tolist())):
            item = response.results.add()
            for c, p in zip(classes, probabilities):
                item.predictions.add(class_index=c, label=labels[c], probability=p, logit=logits[i][c])
            for name in result.features:
                values = result.outputs[name][i]
                item.features.add(name=name, shape=values.shape, dtype=dtype.name,
                                  data=values.astype(dtype, copy=False).tobytes())
        return response

    @grpc_errors
    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[model_info(m) for m in self.dataplane.store.models.values()])

    @grpc_errors
    async def GetModel(self, request: pb.GetModelRequest, context) -> pb.ModelInfo:
        return model_info(self.dataplane.described(request.name))


def model_info(model: ServedModel) -> pb.ModelInfo:
    info = pb.ModelInfo(name=model.name, ready=model.ready, reason=model.error or "")
    if model.version is None:
        return info
    metadata = model.version.metadata
    shapes = model.version.output_shapes
    info.version = model.version.version
    info.input.CopyFrom(pb.TensorSpec(name=metadata["input"]["name"], shape=metadata["input"]["shape"][1:],
                                      dtype=metadata["input"]["dtype"]))
    info.labels.extend(model.version.labels)
    info.features.extend(pb.TensorSpec(name=n, shape=shapes[n], dtype="float32") for n in model.feature_names)
    info.provider = model.runtime.provider
    info.trained = metadata["trained"]
    info.test_acc = metadata["test_acc"] or 0.0
    info.sha256 = metadata["sha256"]
    info.max_batch_size = model.batcher.options.max_batch_size
    info.recipe = (metadata.get("checkpoint") or {}).get("recipe", "")
    return info
