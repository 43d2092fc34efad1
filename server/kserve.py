"""KServe v2 / Open Inference Protocol over gRPC (`inference.GRPCInferenceService`), on the data plane.

The messages and service stubs are the ones `tritonclient` ships (`tritonclient.grpc.service_pb2`),
so Triton's clients, perf_analyzer and anything else that speaks the protocol can call cnnserve.
The conversions that the HTTP front (`server/http.py`) shares live here too: versions, the
`image` input, output selection and the classification extension.

What differs from Triton on purpose: with no outputs requested the logits alone come back (Triton
returns every output; here that would be every feature map); only the `image` input exists.
"""
from __future__ import annotations

import math
import struct
from importlib import metadata as package_metadata

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc

from cnnserve.spec import INPUT_NAME, LOGITS, parse_decimal
from server.dataplane import DataPlane, InferRequest, InferResult
from server.errors import InvalidArgument, NotFound, quote
from server.model_store import ServedModel
from server.service import deadline_of, grpc_errors

SERVICE_DESCRIPTOR = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["classification", "model_configuration", "statistics", "binary_tensor_data"]
MAX_INPUT_DIMS = 4
MAX_INPUT_VALUES = 4096 * 28 * 28      # checked before any conversion; the model's batch limit comes after


def server_version() -> str:
    try:
        return package_metadata.version("cnnserve")
    except package_metadata.PackageNotFoundError:
        return "unknown"


def parse_version(text: str) -> int:
    """'' means the loaded version; otherwise a positive integer."""
    if not text:
        return 0
    version = parse_decimal(text)
    if version is None:
        raise InvalidArgument(f"model_version {quote(text)} is not a version number")
    return version


def image_batch(name: str, datatype: str, shape: list[int], data: bytes | None, values=None) -> np.ndarray:
    """The `image` input as uint8 [N, ...], from raw bytes or typed contents, checked before any allocation."""
    if name != INPUT_NAME:
        raise InvalidArgument(f"input {quote(name)} is unknown; the only input is {INPUT_NAME!r}")
    if datatype != "UINT8":
        raise InvalidArgument(f"input {INPUT_NAME!r} has datatype {quote(datatype)}; it must be UINT8")
    if not 1 <= len(shape) <= MAX_INPUT_DIMS or any(d <= 0 for d in shape):
        raise InvalidArgument(f"input {INPUT_NAME!r} has shape {list(shape)[:8]}; it must be [N, 1, 28, 28] "
                              f"or [N, 28, 28]")
    count = math.prod(shape)      # Python ints: exact however large the client's dimensions
    if count > MAX_INPUT_VALUES:
        raise InvalidArgument(f"input {INPUT_NAME!r}: shape {list(shape)} holds {count:,} values, over the limit of "
                              f"{MAX_INPUT_VALUES:,}")
    if data is not None:
        if len(data) != count:
            raise InvalidArgument(f"input {INPUT_NAME!r}: shape {list(shape)} needs {count:,} bytes, "
                                  f"the request has {len(data):,}")
        return np.frombuffer(data, dtype=np.uint8).reshape(shape)
    if values is None or len(values) != count:
        raise InvalidArgument(f"input {INPUT_NAME!r}: shape {list(shape)} needs {count:,} values, the request has "
                              f"{0 if values is None else len(values):,}")
    array = np.asarray(values, dtype=np.int64)
    if array.min() < 0 or array.max() > 255:
        raise InvalidArgument(f"input {INPUT_NAME!r}: UINT8 values must be in 0..255")
    return array.astype(np.uint8).reshape(shape)


def selected_outputs(model: ServedModel, requested: list[tuple[str, int]]) -> tuple[list[str], dict[str, int]]:
    """(name, classification count or 0) pairs -> the feature maps to compute and the classification counts,
    each checked against the number of classes."""
    available = [LOGITS, *model.feature_names]
    unknown = [name for name, _ in requested if name not in available]
    if unknown:
        raise NotFound(f"model {model.name} has no output {', '.join(quote(n) for n in unknown[:10])}; "
                       f"it has: {', '.join(available)}")
    wanted = {name for name, _ in requested}
    features = [name for name in model.feature_names if name in wanted]
    classification = {name: k for name, k in requested if k}
    if any(name != LOGITS for name in classification):
        raise InvalidArgument(f"the classification extension applies to {LOGITS!r} only")
    classes = len(model.version.labels)
    for k in classification.values():
        if not 1 <= k <= classes:
            raise InvalidArgument(f"classification {k} is out of range: it must be between 1 and {classes}")
    return features, classification


def classification_strings(result: InferResult, k: int) -> np.ndarray:
    """Triton's classification extension: [N, k] strings "score:index:label", best first (score: the logit).
    The request asked the data plane for top_k >= k: the classes come ranked by the batcher."""
    logits = result.outputs[LOGITS]
    top = result.top_indices[:, :k]
    return np.array([[f"{logits[i, c]:f}:{c}:{result.labels[c]}" for c in row] for i, row in enumerate(top)],
                    dtype=object)


def serialize_bytes(strings: np.ndarray) -> bytes:
    """BYTES tensor contents as the protocol lays them out: each element a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(b)) + b for b in (s.encode() for s in strings.reshape(-1)))


def tensor_metadata(model: ServedModel) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]:
    """(name, datatype, shape with -1 for the batch) of the inputs and the outputs."""
    meta = model.version.metadata
    inputs = [(meta["input"]["name"], "UINT8", list(meta["input"]["shape"]))]
    outputs = [(o["name"], "FP32", list(o["shape"])) for o in meta["outputs"]]
    return inputs, outputs


def model_statistics(dataplane: DataPlane, name: str) -> dict:
    """One model's ModelStatistics in the protocol's JSON shape (HTTP sends it, gRPC parses it)."""
    model = dataplane.described(name)
    s = dataplane.metrics.totals(name)     # over all worker processes
    return {"name": name, "version": str(model.version.version) if model.version else "",
            "last_inference": s.last_inference_ms, "inference_count": s.inference_count,
            "execution_count": s.execution_count, "inference_stats": {
                "success": {"count": s.success_count, "ns": s.success_ns},
                "fail": {"count": s.fail_count, "ns": s.fail_ns},
                "queue": {"count": s.success_count, "ns": s.queue_ns},
                "compute_infer": {"count": s.success_count, "ns": s.compute_ns}}}


def repository_index(dataplane: DataPlane, ready_only: bool = False) -> list[dict]:
    """The repository index in the protocol's JSON shape."""
    return [{"name": m.name, "version": str(m.version.version) if m.version else "",
             "state": "READY" if m.ready else "UNAVAILABLE", "reason": m.error or ""}
            for m in dataplane.store.models.values() if m.ready or not ready_only]


class KServeGrpcService(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane):
        self.dataplane = dataplane

    @grpc_errors
    async def ServerLive(self, request, context):
        return kpb.ServerLiveResponse(live=True)

    @grpc_errors
    async def ServerReady(self, request, context):
        return kpb.ServerReadyResponse(ready=self.dataplane.ready())

    @grpc_errors
    async def ModelReady(self, request, context):
        model = self.dataplane.store.models.get(request.name)
        version = parse_version(request.version)
        ready = bool(model and model.ready and version in (0, model.version.version))
        return kpb.ModelReadyResponse(ready=ready)

    @grpc_errors
    async def ServerMetadata(self, request, context):
        return kpb.ServerMetadataResponse(name="cnnserve", version=server_version(), extensions=EXTENSIONS)

    @grpc_errors
    async def ModelMetadata(self, request, context):
        model = self.dataplane.model(request.name, parse_version(request.version))
        inputs, outputs = tensor_metadata(model)
        tensor = kpb.ModelMetadataResponse.TensorMetadata
        return kpb.ModelMetadataResponse(
            name=model.name, versions=[str(model.version.version)], platform=PLATFORM,
            inputs=[tensor(name=n, datatype=d, shape=s) for n, d, s in inputs],
            outputs=[tensor(name=n, datatype=d, shape=s) for n, d, s in outputs])

    @grpc_errors
    async def ModelConfig(self, request, context):
        model = self.dataplane.model(request.name, parse_version(request.version))
        return kpb.ModelConfigResponse(config=model.version.config)

    @grpc_errors
    async def RepositoryIndex(self, request, context):
        return json_format.ParseDict({"models": repository_index(self.dataplane, request.ready)},
                                     kpb.RepositoryIndexResponse())

    @grpc_errors
    async def ModelStatistics(self, request, context):
        names = [request.name] if request.name else list(self.dataplane.store.models)
        return json_format.ParseDict({"model_stats": [model_statistics(self.dataplane, n) for n in names]},
                                     kpb.ModelStatisticsResponse())

    @grpc_errors
    async def ModelInfer(self, request: kpb.ModelInferRequest, context) -> kpb.ModelInferResponse:
        if len(request.inputs) != 1:
            raise InvalidArgument(f"the request has {len(request.inputs)} inputs; send one, {INPUT_NAME!r}")
        if request.raw_input_contents and len(request.raw_input_contents) != 1:
            raise InvalidArgument("raw_input_contents must hold one entry per input (one)")
        tensor = request.inputs[0]
        raw = request.raw_input_contents[0] if request.raw_input_contents else None
        batch = image_batch(tensor.name, tensor.datatype, list(tensor.shape), raw,
                            None if raw is not None else tensor.contents.uint_contents)
        model = self.dataplane.model(request.model_name, parse_version(request.model_version))
        requested = [(o.name, o.parameters["classification"].int64_param if "classification" in o.parameters else 0)
                     for o in request.outputs] or [(LOGITS, 0)]
        features, classification = selected_outputs(model, requested)
        result = await self.dataplane.infer(InferRequest(model=model.name, version=model.version.version, batch=batch,
                                                         features=features, top_k=max(classification.values(), default=0),
                                                         deadline=deadline_of(context), caller=context.peer()))
        response = kpb.ModelInferResponse(model_name=result.model, model_version=str(result.version), id=request.id)
        for name, _ in requested:
            if name in classification:
                strings = classification_strings(result, classification[name])
                response.outputs.add(name=name, datatype="BYTES", shape=strings.shape)
                response.raw_output_contents.append(serialize_bytes(strings))
            else:
                values = result.outputs[name]
                response.outputs.add(name=name, datatype="FP32", shape=values.shape)
                response.raw_output_contents.append(values.astype("<f4", copy=False).tobytes())
        return response
