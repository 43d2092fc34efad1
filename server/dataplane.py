"""The protocol-neutral data plane: what an inference request means, whatever protocol carried it.

Adapters (`server/service.py` for cnnserve.v1, `server/kserve.py` for KServe v2 over gRPC,
`server/http.py` for KServe v2 over HTTP) only convert their messages to an `InferRequest` and
an `InferResult` back, and map `ServiceError.status` to their own codes. Everything else lives
here once: model lookup, the checks and their messages, feature selection, the response-size
budget, decoding, batching (which ranks the classes once per run), top-k, metrics and statistics.

It runs on the server's event loop. Raw pixels and small encoded images are checked and decoded
on the loop (tens of microseconds); a request with more encoded bytes than `INLINE_DECODE_BYTES`
is decoded on a small thread pool, so one costly image cannot stall everyone else's requests
(and at most `DECODE_THREADS` requests decode at once, each within its `DecodeBudget`).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from cnnserve.spec import LOGITS, UnknownFeatures, select_features
from server.batcher import RANKED_PROBABILITIES, RANKING
from server.core_share import CoreShare
from server.errors import InvalidArgument, NotFound, ResourceExhausted, ServiceError, Unavailable, quote
from server.images import DecodeBudget, decode_encoded, decode_tensor
from server.metrics import Metrics
from server.model_store import ModelStore, ServedModel

PER_IMAGE_OVERHEAD_BYTES = 64     # framing of one image's results in any protocol, beyond the payload
PER_OUTPUT_OVERHEAD_BYTES = 64
PER_PREDICTION_BYTES = 48
# Encoded bytes a request may decode on the event loop itself. zlib inflates at most about 1000:1,
# so 2 KB of PNG (a Fashion-MNIST image is 300-800 bytes) decodes to at most ~2 MB: milliseconds.
INLINE_DECODE_BYTES = 2 * 1024
DEADLINE_CLOCK_SLACK_S = 0.005     # a cancellation this close to the deadline is the deadline (_counted_infer)
DECODE_THREADS = 2                # requests decoding off the loop at once (each within its DecodeBudget)


# Images and requests are plain slotted dataclasses, not frozen ones: a frozen dataclass's __init__ sets
# each field through object.__setattr__, ~3x the cost, and a 64-image request builds 64 images.
@dataclass(slots=True)
class EncodedImage:
    """A PNG or JPEG file, fitted to the model's input the Fashion-MNIST way."""
    data: bytes


@dataclass(slots=True)
class PixelImage:
    """One image's raw pixels: shape [side, side] or [1, side, side], dtype uint8 (0..255) or float32 (0..1)."""
    shape: Sequence[int]
    dtype: str
    data: bytes


@dataclass(slots=True)
class InferRequest:
    model: str
    version: int = 0                             # 0: the version the server loaded
    images: Sequence[EncodedImage | PixelImage] = ()
    batch: np.ndarray | None = None              # or the whole batch at once: uint8 [N, 1, side, side]
    features: Sequence[str] = ()                 # feature maps beside the logits, or ["all"]
    top_k: int = 0                               # 0: no top-k; else 1..classes
    feature_itemsize: int = 4                    # bytes per feature value in the response (budget check)
    deadline: float | None = None                # a time.monotonic() value
    caller: str = ""                             # who asks (a connection): the batcher's fair share is per caller


@dataclass
class InferResult:
    model: str
    version: int
    labels: list[str]
    outputs: dict[str, np.ndarray]   # "logits" and each requested feature map, float32 [N, ...], model order
    top_indices: np.ndarray | None   # int [N, k], best first (None without top_k)
    top_probabilities: np.ndarray | None
    decode_s: float
    queue_s: float
    compute_s: float
    batch_size: int                  # images in the ONNX Runtime run(s) this request was part of
    features: list[str] = field(default_factory=list)
    pixels: np.ndarray | None = None  # uint8 [N, 1, side, side]: the images as the model received them


class DataPlane:
    def __init__(self, store: ModelStore, metrics: Metrics, max_response_bytes: int, cores: CoreShare | None = None):
        self.store = store
        self.cores = cores or CoreShare()      # tells the other workers whether this one has requests in flight
        self.metrics = metrics
        self.max_response_bytes = max_response_bytes
        self.draining = False
        self.last_refused = 0.0            # time.monotonic() of the last request refused while draining
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._decoder = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode")

    async def drain(self, timeout: float, quiet: float = 0.1) -> bool:
        """Refuse new requests (UNAVAILABLE, which clients retry elsewhere), wait for those in flight,
        then until no refusal for `quiet` seconds (clients have heard), within `timeout`; True when
        nothing is left in flight."""
        deadline = time.monotonic() + timeout
        self.draining = True
        self.last_refused = time.monotonic()   # the quiet period starts no earlier than now
        if self._in_flight:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                pass
        while time.monotonic() - self.last_refused < quiet and time.monotonic() < deadline:
            await asyncio.sleep(quiet / 4)
        return self._in_flight == 0

    def ready(self) -> bool:
        """Server readiness, as Triton's strict readiness: every model to be served is loaded and warm, and the
        server is not shutting down. A model that failed to load keeps the server not ready (it serves the
        others all the same): a readiness probe must not send traffic to a replica missing a model."""
        return bool(self.store.models) and all(model.ready for model in self.store.models.values()) \
            and not self.draining

    def model(self, name: str, version: int = 0) -> ServedModel:
        """A ready model (NotFound, or Unavailable with its reason)."""
        return self.store.get(name, version)

    def described(self, name: str) -> ServedModel:
        """A model whether or not it is ready, for metadata and readiness questions."""
        model = self.store.models.get(name)
        if model is None:
            raise NotFound(f"model {quote(name)} is not served; models: {', '.join(self.store.models) or 'none'}")
        return model

    async def infer(self, request: InferRequest) -> InferResult:
        if self.draining:
            self.last_refused = time.monotonic()
            raise Unavailable("the server is shutting down; retry on another replica")
        self._in_flight += 1
        if self._in_flight == 1:
            self.cores.set_busy(True)
        try:
            return await self._counted_infer(request)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self.cores.set_busy(False)
                self._idle.set()

    async def _counted_infer(self, request: InferRequest) -> InferResult:
        start = time.perf_counter()
        label = request.model if request.model in self.store.models else "<unknown>"
        self.metrics.started(label)
        status, result = "INTERNAL", None
        try:
            result = await self._infer(request, start)
            status = "OK"
            return result
        except ServiceError as error:
            status = error.status
            raise
        except asyncio.CancelledError:   # grpc.aio cancels the call when the client leaves or its deadline passes
            # gRPC's deadline timer and our copy of the deadline (read from it a moment later) are two clocks:
            # a cancellation within a few ms of our copy counts as the deadline, not as the client leaving.
            expired = request.deadline is not None and time.monotonic() >= request.deadline - DEADLINE_CLOCK_SLACK_S
            status = "DEADLINE_EXCEEDED" if expired else "CANCELLED"
            raise
        finally:
            self.metrics.finished(label)
            self.metrics.record(label, status, time.perf_counter() - start,
                                *((result.outputs[LOGITS].shape[0], result.queue_s, result.compute_s) if result else ()))

    async def _infer(self, request: InferRequest, start: float) -> InferResult:
        model = self.model(request.model, request.version)
        labels = model.version.labels
        top_k = check_top_k(request.top_k, len(labels)) if request.top_k else 0
        features = requested_features(model, list(request.features))
        n_images = len(request.batch) if request.batch is not None else len(request.images)
        self.check_response_size(model, n_images, features, request.feature_itemsize, top_k)
        limit, side = model.batcher.options.max_batch_size, model.version.input_side
        if request.batch is not None:
            pixels = check_batch(request.batch, limit, side)
        elif sum(len(i.data) for i in request.images if isinstance(i, EncodedImage)) <= INLINE_DECODE_BYTES:
            pixels = decode_images(request.images, limit, side)
        else:
            with model.batcher.arriving():
                pixels = await asyncio.get_running_loop().run_in_executor(
                    self._decoder, decode_images, request.images, limit, side)
        decode_s = time.perf_counter() - start
        ranking = [RANKING, RANKED_PROBABILITIES] if top_k else []
        result = await model.batcher.infer(pixels, [LOGITS, *ranking, *features], request.deadline, request.caller)
        outputs, top_indices, top_probabilities = result.outputs, None, None
        if top_k:      # ranked once per run by the batcher; this request's top-k is a slice
            top_indices, top_probabilities = outputs.pop(RANKING)[:, :top_k], outputs.pop(RANKED_PROBABILITIES)[:, :top_k]
        return InferResult(model.name, model.version.version, labels, outputs, top_indices, top_probabilities,
                           decode_s, result.queue_s, result.compute_s, result.batch_size, features, pixels)

    def check_response_size(self, model: ServedModel, n_images: int, features: list[str], itemsize: int,
                            top_k: int) -> None:
        """Refuse before compute a response that would exceed the message limit, saying by how much."""
        values = model.version.output_values
        per_image = PER_IMAGE_OVERHEAD_BYTES + top_k * PER_PREDICTION_BYTES + sum(
            values[name] * itemsize + PER_OUTPUT_OVERHEAD_BYTES for name in [LOGITS, *features])
        size = n_images * per_image
        if size > self.max_response_bytes:
            fits = max(self.max_response_bytes // per_image, 0)
            raise ResourceExhausted(
                f"the response would be about {size / 2**20:.1f} MiB, over the server's message limit of "
                f"{self.max_response_bytes / 2**20:.0f} MiB; {fits} image(s) with these outputs fit. Ask for fewer "
                f"images or feature maps, use float16 feature maps, or raise --max-message-mb")


def check_top_k(top_k: int, classes: int) -> int:
    if not 1 <= top_k <= classes:
        raise InvalidArgument(f"top_k {top_k} is out of range: it must be between 1 and {classes} "
                              f"(the number of classes)")
    return top_k


def requested_features(model: ServedModel, requested: list[str]) -> list[str]:
    try:
        return select_features(model.feature_names, requested)
    except UnknownFeatures as error:
        raise NotFound(f"model {model.name} has {error}") from None


def check_count(n: int, limit: int) -> None:
    if n == 0:
        raise InvalidArgument("images is empty: send at least one image")
    if n > limit:
        raise InvalidArgument(f"images has {n} images; the limit for one request is {limit}")


def decode_images(images: Sequence[EncodedImage | PixelImage], limit: int, side: int) -> np.ndarray:
    check_count(len(images), limit)
    if all_raw_pixels(images, side):     # the common case, in one copy rather than one per image
        return np.frombuffer(b"".join([image.data for image in images]), np.uint8).reshape(len(images), 1, side, side)
    pixels = np.empty((len(images), 1, side, side), dtype=np.uint8)
    budget = DecodeBudget()
    for i, image in enumerate(images):
        field = f"images[{i}]"
        if isinstance(image, EncodedImage):
            pixels[i, 0] = decode_encoded(image.data, f"{field}.encoded", side, budget)
        elif isinstance(image, PixelImage):
            pixels[i, 0] = decode_tensor(list(image.shape), image.dtype, image.data, f"{field}.tensor", side)
        else:
            raise InvalidArgument(f"{field} has neither encoded bytes nor a tensor")
    return pixels


def all_raw_pixels(images: Sequence[EncodedImage | PixelImage], side: int) -> bool:
    """Whether every image is uint8 pixels of the model's shape, so the batch is their bytes joined."""
    shapes, size = ([side, side], [1, side, side]), side * side
    return all(type(image) is PixelImage and image.dtype == "uint8" and len(image.data) == size
               and list(image.shape) in shapes for image in images)


def check_batch(batch: np.ndarray, limit: int, side: int) -> np.ndarray:
    """A whole batch of raw pixels: uint8 [N, 1, side, side] or [N, side, side]."""
    if batch.dtype != np.uint8:
        raise InvalidArgument(f"the image tensor has datatype {batch.dtype}; it must be uint8 (pixels 0..255)")
    if batch.ndim == 3:
        batch = batch[:, None]
    if batch.ndim != 4 or batch.shape[1:] != (1, side, side):
        raise InvalidArgument(f"the image tensor has shape {list(batch.shape)[:8]}; it must be "
                              f"[N, 1, {side}, {side}] or [N, {side}, {side}]")
    check_count(len(batch), limit)
    return batch
