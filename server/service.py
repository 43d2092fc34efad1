"""The cnnserve.v1 gRPC adapter: `Classifier` messages to and from the data plane.

It converts protobuf to `InferRequest`s and `InferResult`s back; the data plane checks them.
Status mapping, request parsing and deadlines are shared with KServe's gRPC adapter
(`server/grpc_common.py`). Handlers are coroutines on the server's event loop (`grpc.aio`).
"""
from __future__ import annotations

import grpc
import numpy as np

from cnnserve.proto import classifier_pb2 as pb
from cnnserve.proto import classifier_pb2_grpc
from cnnserve.spec import LOGITS
from server import tracing
from server.dataplane import DataPlane, EncodedImage, InferRequest, InferResult, PixelBatch, PixelImage
from server.errors import InvalidArgument
from server.grpc_common import deadline_of, grpc_errors
from server.model_store import ServedModel

ENCODINGS = {pb.FEATURE_ENCODING_FLOAT32: np.dtype("<f4"), pb.FEATURE_ENCODING_FLOAT16: np.dtype("<f2")}
CLASSIFY = tracing.grpc_method(pb.DESCRIPTOR.services_by_name["Classifier"].full_name, "Classify")


def image_input(image: pb.Image) -> EncodedImage | PixelImage | None:
    source = image.WhichOneof("source")
    if source == "encoded":
        return EncodedImage(image.encoded)
    if source == "tensor":
        tensor = image.tensor
        return PixelImage(tensor.shape, tensor.dtype, tensor.data)
    return None


def batch_input(request: pb.ClassifyRequest) -> PixelBatch | None:
    """The `batch` tensor, for the data plane to check."""
    if not request.HasField("batch"):
        return None
    if request.images:
        raise InvalidArgument("send images or batch, not both")
    tensor = request.batch
    return PixelBatch("batch", tensor.dtype, list(tensor.shape), tensor.data)


class ClassifierService(classifier_pb2_grpc.ClassifierServicer):
    def __init__(self, dataplane: DataPlane):
        self.dataplane = dataplane

    @grpc_errors
    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        with tracing.request_span(CLASSIFY, request.model, context) as trace:
            dtype = ENCODINGS.get(request.feature_encoding)
            if dtype is None:
                raise InvalidArgument(f"feature_encoding {request.feature_encoding} is not one of {list(ENCODINGS)}")
            result = await trace.infer(self.dataplane, InferRequest(
                model=request.model, version=request.version, top_k=request.top_k or 1, features=list(request.features),
                images=[image_input(image) for image in request.images], batch=batch_input(request),
                feature_itemsize=dtype.itemsize, deadline=deadline_of(context), caller=context.peer()))
            return classify_response(result, dtype)

    @grpc_errors
    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[model_info(m) for m in self.dataplane.models()])

    @grpc_errors
    async def GetModel(self, request: pb.GetModelRequest, context) -> pb.ModelInfo:
        return model_info(self.dataplane.described(request.name))


def classify_response(result: InferResult, dtype: np.dtype) -> pb.ClassifyResponse:
    response = pb.ClassifyResponse(model=result.model, version=result.version, timings=pb.Timings(
        decode_ms=result.decode_s * 1e3, queue_ms=result.queue_s * 1e3, compute_ms=result.compute_s * 1e3,
        batch_size=result.batch_size))
    logits, labels = result.outputs[LOGITS].tolist(), result.labels    # Python floats: cheaper to copy out
    for i, (classes, probabilities) in enumerate(zip(result.top_indices.tolist(), result.top_probabilities.tolist())):
        item = response.results.add()
        for c, p in zip(classes, probabilities):
            item.predictions.add(class_index=c, label=labels[c], probability=p, logit=logits[i][c])
        for name in result.features:
            values = result.outputs[name][i]
            item.features.add(name=name, shape=values.shape, dtype=dtype.name,
                              data=values.astype(dtype, copy=False).tobytes())
    return response


def model_info(model: ServedModel) -> pb.ModelInfo:
    """The model as its newest served version describes it; `reason` also when a version failed beside it."""
    info = pb.ModelInfo(name=model.name, ready=model.ready, reason=model.reason, versions=list(model.versions))
    served = model.default
    if served is None:
        return info
    metadata = served.version.metadata
    shapes = served.version.output_shapes
    info.version = served.version.version
    info.input.CopyFrom(pb.TensorSpec(name=metadata.input.name, shape=metadata.input.shape[1:],
                                      dtype=metadata.input.dtype))
    info.labels.extend(served.version.labels)
    info.features.extend(pb.TensorSpec(name=n, shape=shapes[n], dtype="float32") for n in served.feature_names)
    info.provider = served.runtime.provider
    info.trained = metadata.trained
    info.test_acc = metadata.test_acc or 0.0
    info.sha256 = metadata.sha256
    info.max_batch_size = served.batcher.options.max_batch_size
    info.recipe = metadata.recipe
    return info
