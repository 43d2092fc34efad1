"""The gRPC adapter: `cnnserve.v1.Classifier` on top of the model store.

It converts protobuf to arrays and back, checks requests, and maps `ServiceError`s to status
codes. Every refused request leaves one log line; clients never see a stack trace.
"""
from __future__ import annotations

import functools
import logging
import time

import grpc
import numpy as np

from server.errors import InvalidArgument, NotFound, ResourceExhausted, ServiceError
from server.images import decode_encoded, decode_tensor
from server.metrics import Metrics
from server.model_store import LOGITS, ModelStore, ServedModel
from server.proto import classifier_pb2 as pb
from server.proto import classifier_pb2_grpc

log = logging.getLogger(__name__)
ENCODINGS = {pb.FEATURE_ENCODING_FLOAT32: np.dtype("<f4"), pb.FEATURE_ENCODING_FLOAT16: np.dtype("<f2")}
PER_IMAGE_OVERHEAD_BYTES = 64     # protobuf framing of one result, beyond its payload
PER_FEATURE_OVERHEAD_BYTES = 64
PER_PREDICTION_BYTES = 48


def grpc_errors(method):
    """Turn ServiceErrors into gRPC statuses, and anything unexpected into INTERNAL with a logged trace."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except ServiceError as error:
            log.warning("%s refused (%s): %s", method.__name__, error.code.name, error.message)
            context.abort(error.code, error.message)
        except Exception:  # the RPC boundary: log the trace here, send the client a status
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal server error; the server log has the details")

    return wrapper


class ClassifierService(classifier_pb2_grpc.ClassifierServicer):
    def __init__(self, store: ModelStore, metrics: Metrics, max_message_bytes: int):
        self.store = store
        self.metrics = metrics
        self.max_message_bytes = max_message_bytes

    @grpc_errors
    def Classify(self, request: pb.ClassifyRequest, context: grpc.ServicerContext) -> pb.ClassifyResponse:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        model_label = request.model if request.model in self.store.models else "<unknown>"
        self.metrics.in_flight.labels(model_label).inc()
        try:
            return self._classify(request, context, start)
        except ServiceError as error:
            code = error.code
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            raise
        finally:
            self.metrics.in_flight.labels(model_label).dec()
            self.metrics.requests.labels(model_label, code.name).inc()
            if code == grpc.StatusCode.OK:
                self.metrics.latency.labels(model_label).observe(time.perf_counter() - start)

    def _classify(self, request: pb.ClassifyRequest, context: grpc.ServicerContext, start: float) -> pb.ClassifyResponse:
        model = self.store.get(request.model, request.version)
        with model.batcher.arriving() as arrival:
            top_k = check_top_k(request.top_k, len(model.version.labels))
            features = select_features(model, list(request.features))
            dtype = ENCODINGS.get(request.feature_encoding)
            if dtype is None:
                raise InvalidArgument(f"feature_encoding {request.feature_encoding} is not one of {list(ENCODINGS)}")
            self._check_response_size(model, len(request.images), features, dtype, top_k)
            images = decode_images(request.images, model.batcher.options.max_batch_size)
            decode_s = time.perf_counter() - start
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            result = model.batcher.infer(images, [LOGITS, *features], deadline, context.is_active, arrival)
        self.metrics.queue.labels(model.name).observe(result.queue_s)
        response = pb.ClassifyResponse(model=model.name, version=model.version.version, timings=pb.Timings(
            decode_ms=decode_s * 1e3, queue_ms=result.queue_s * 1e3, compute_ms=result.compute_s * 1e3,
            batch_size=result.batch_size))
        logits = result.outputs[LOGITS]
        probabilities = softmax(logits)
        top = np.argsort(-logits, axis=1, kind="stable")[:, :top_k]
        labels = model.version.labels
        for i in range(len(images)):
            item = response.results.add()
            for c in top[i]:
                item.predictions.add(class_index=int(c), label=labels[c], probability=float(probabilities[i, c]),
                                     logit=float(logits[i, c]))
            for name in features:
                values = result.outputs[name][i]
                item.features.add(name=name, shape=values.shape, dtype=dtype.name,
                                  data=values.astype(dtype, copy=False).tobytes())
        return response

    def _check_response_size(self, model: ServedModel, n_images: int, features: list[str], dtype: np.dtype,
                             top_k: int) -> None:
        """Refuse before compute a response that would exceed the message limit, saying by how much."""
        shapes = model.version.output_shapes
        per_image = PER_IMAGE_OVERHEAD_BYTES + top_k * PER_PREDICTION_BYTES + sum(
            int(np.prod(shapes[name])) * dtype.itemsize + PER_FEATURE_OVERHEAD_BYTES for name in features)
        size = n_images * per_image
        if size > self.max_message_bytes:
            fits = max(self.max_message_bytes // per_image, 0)
            raise ResourceExhausted(
                f"the response would be about {size / 2**20:.1f} MiB, over the server's message limit of "
                f"{self.max_message_bytes / 2**20:.0f} MiB; {fits} image(s) with these features fit. Ask for fewer "
                f"images or feature maps, use feature_encoding FEATURE_ENCODING_FLOAT16, or raise --max-message-mb")

    @grpc_errors
    def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[model_info(m) for m in self.store.models.values()])

    @grpc_errors
    def GetModel(self, request: pb.GetModelRequest, context) -> pb.ModelInfo:
        model = self.store.models.get(request.name)
        if model is None:
            raise NotFound(f"model {request.name!r} is not served; models: {', '.join(self.store.models) or 'none'}")
        return model_info(model)


def check_top_k(top_k: int, classes: int) -> int:
    top_k = top_k or 1
    if not 1 <= top_k <= classes:
        raise InvalidArgument(f"top_k {top_k} is out of range: it must be between 1 and {classes} (the number of classes)")
    return top_k


def select_features(model: ServedModel, requested: list[str]) -> list[str]:
    available = model.feature_names
    if requested == ["all"]:
        return available
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise NotFound(f"model {model.name} has no feature map {', '.join(map(repr, unknown))}; "
                       f"it has: {', '.join(available) or 'none'} (or ask for 'all')")
    return [name for name in available if name in requested]


def decode_images(images, limit: int) -> np.ndarray:
    if not images:
        raise InvalidArgument("images is empty: send at least one image")
    if len(images) > limit:
        raise InvalidArgument(f"images has {len(images)} images; the limit for one request is {limit}")
    pixels = np.empty((len(images), 1, 28, 28), dtype=np.uint8)
    for i, image in enumerate(images):
        field = f"images[{i}]"
        source = image.WhichOneof("source")
        if source == "encoded":
            pixels[i, 0] = decode_encoded(image.encoded, f"{field}.encoded")
        elif source == "tensor":
            t = image.tensor
            pixels[i, 0] = decode_tensor(list(t.shape), t.dtype, t.data, f"{field}.tensor")
        else:
            raise InvalidArgument(f"{field} has neither encoded bytes nor a tensor")
    return pixels


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


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
