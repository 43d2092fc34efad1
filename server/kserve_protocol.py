"""KServe v2 (Open Inference Protocol) whatever transport carries it: gRPC (`server/kserve.py`) and
HTTP (`server/http.py`) both convert their messages with these: versions, the `image` input (for
the data plane to check), outputs and the classification extension, tensor metadata, statistics
and the repository extension (index, load, unload; server/model_control.py) in the protocol's shapes.

What differs from Triton on purpose: with no outputs requested the logits alone come back (Triton
returns every output; here that would be every feature map); only the `image` input exists. Each model NAME
is also served as NAME.logits, whose metadata lists the logits alone (`server/model_store.py` LogitsView).
"""
from __future__ import annotations

import struct
from importlib import metadata as package_metadata

import numpy as np

from cnnserve.spec import INPUT_NAME, LOGITS, parse_decimal
from server.dataplane import DataPlane, InferResult, PixelBatch
from server.errors import InvalidArgument, NotFound, quote
from server.metrics import Totals
from server.model_control import ModelControl
from server.model_store import Servable

PLATFORM = "onnxruntime_onnx"
# The shared-memory extensions (system and CUDA) are not offered; what a client that asks for them is told, on
# gRPC and HTTP:
NO_SHARED_MEMORY = ("cnnserve does not offer shared memory (system or CUDA): send the input tensors in the request "
                    "(raw_input_contents over gRPC, binary data over HTTP) and read the outputs from the response")
EXTENSIONS = ["classification", "model_configuration", "model_repository", "statistics", "binary_tensor_data"]


def server_version() -> str:
    try:
        return package_metadata.version("cnnserve")
    except package_metadata.PackageNotFoundError:
        return "unknown"


def parse_version(text: str) -> int:
    """'' means the newest version served; otherwise a positive integer."""
    if not text:
        return 0
    version = parse_decimal(text)
    if version is None:
        raise InvalidArgument(f"model_version {quote(text)} is not a version number")
    return version


def image_input(name: str, datatype: str, shape: list[int], data: bytes | memoryview | None,
                values=None) -> PixelBatch:
    """The `image` input, from raw bytes or typed contents, for the data plane to check."""
    if name != INPUT_NAME:
        raise InvalidArgument(f"input {quote(name)} is unknown; the only input is {INPUT_NAME!r}")
    return PixelBatch(f"input {INPUT_NAME!r}", datatype, shape, data, None if data is not None else values,
                      uint8_name="UINT8")


def selected_outputs(requested: list[tuple[str, int]]) -> tuple[list[str], int]:
    """(name, classification count or 0) pairs -> the feature maps to compute (the data plane checks that the
    model has them) and the classification count (checked there against the number of classes as top_k)."""
    features, classification = {}, 0      # features: a dict, to keep the first of repeated names in one pass
    for name, k in requested:             # a loop, not generators: this runs for every request
        if name != LOGITS:
            if k:
                raise InvalidArgument(f"the classification extension applies to {LOGITS!r} only")
            features[name] = None
        elif k:
            classification = k            # the last one asked for
    return list(features), classification


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


def served_versions(dataplane: DataPlane, name: str) -> list[str]:
    """Every version of a model that serves now, for ModelMetadata's `versions`."""
    return [str(version) for version in dataplane.described(name).versions]


def tensor_metadata(model: Servable) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]:
    """(name, datatype, shape with -1 for the batch) of the inputs and the outputs."""
    meta = model.version.metadata
    inputs = [(meta.input.name, "UINT8", list(meta.input.shape))]
    outputs = [(o.name, "FP32", list(o.shape)) for o in meta.outputs]
    return inputs, outputs


def statistics(dataplane: DataPlane, name: str = "", version: str = "") -> dict:
    """The statistics extension's answer in the protocol's JSON shape (HTTP sends it, gRPC parses it): every
    model's, or one model's, at every version counted or at one."""
    if not name:
        if version:
            raise InvalidArgument("a model_version needs a model name")
        return {"model_stats": [stats for model in dataplane.models() for stats in model_statistics(dataplane, model.name)]}
    return {"model_stats": model_statistics(dataplane, name, parse_version(version))}


def model_statistics(dataplane: DataPlane, name: str, version: int = 0) -> list[dict]:
    """One model's ModelStatistics, one per version (0: every version served or counted), over all worker
    processes. What each stage measures: server/metrics.py `StageTimes`."""
    model = dataplane.described(name)
    by_version = dataplane.metrics.totals(name, model.default_version)
    for served in model.versions:
        by_version.setdefault(served, Totals(version=served))
    if version and version not in by_version:
        raise NotFound(f"model {quote(name)} has no statistics for version {version}; it has them for version(s) "
                       f"{', '.join(str(v) for v in sorted(by_version) if v) or 'none'}")
    return [version_statistics(name, by_version[v]) for v in ([version] if version else sorted(by_version))]


def version_statistics(name: str, s: Totals) -> dict:
    """One model version's ModelStatistics entry."""
    requests = s.success_count      # each stage is counted once per successful request, as Triton counts them
    duration = lambda count, ns: {"count": count, "ns": ns}
    return {"name": name, "version": str(s.version) if s.version else "",
            "last_inference": s.last_inference_ms, "inference_count": s.inference_count,
            "execution_count": s.execution_count, "inference_stats": {
                "success": duration(requests, s.success_ns), "fail": duration(s.fail_count, s.fail_ns),
                "queue": duration(requests, s.queue_ns), "compute_input": duration(requests, s.compute_input_ns),
                "compute_infer": duration(requests, s.compute_infer_ns),
                "compute_output": duration(requests, s.compute_output_ns),
                # no response cache; perf_analyzer reads both all the same
                "cache_hit": duration(0, 0), "cache_miss": duration(0, 0)},
            "batch_stats": [{"batch_size": size, "compute_input": duration(b.count, b.compute_input_ns),
                             "compute_infer": duration(b.count, b.compute_infer_ns),
                             "compute_output": duration(b.count, b.compute_output_ns)}
                            for size, b in sorted(s.batches.items())]}


async def repository_index(control: ModelControl, ready_only: bool = False) -> list[dict]:
    """The repository index in the protocol's JSON shape: a row per model version (state READY, LOADING,
    UNLOADING or UNAVAILABLE, and why), a row without a version for a model that has none."""
    return [{"name": entry.name, "version": str(entry.version) if entry.version else "", "state": entry.state,
             "reason": entry.reason} for entry in await control.index(ready_only)]
