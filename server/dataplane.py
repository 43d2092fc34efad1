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
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from cnnserve.spec import LOGITS, LOGITS_VIEW_SUFFIX, UnknownFeatures, select_features
from server.batcher import RANKED_PROBABILITIES, RANKING
from server.core_share import CoreShare
from server.errors import InvalidArgument, NotFound, ResourceExhausted, ServiceError, Unavailable, quote
from server.images import DecodeBudget, decode_encoded, decode_tensor
from server.metrics import Metrics, StageTimes
from server.model_store import ModelStore, Servable, ServedModel

# The response-size rule: framing of one image's results in any protocol, beyond the payload. The explorer
# page reads these from the model metadata (HTTP `parameters`) to warn before it asks for too much.
RESPONSE_OVERHEAD_BYTES = {"per_image": 64, "per_output": 64, "per_prediction": 48}
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
class PixelBatch:
    """A whole batch of raw pixels as the client sent it, unchecked: `field` names it in errors, `dtype`
    must equal `uint8_name` (the protocol's name for uint8), and the values come as bytes or as integers."""
    field: str
    dtype: str
    shape: Sequence[int]
    data: bytes | memoryview | None = None
    values: Sequence[int] | None = None
    uint8_name: str = "uint8"


@dataclass(slots=True)
class InferRequest:
    model: str
    version: int = 0                             # 0: the newest version served
    images: Sequence[EncodedImage | PixelImage] = ()
    batch: PixelBatch | None = None              # or the whole batch at once: uint8 [N, 1, side, side]
    features: Sequence[str] = ()                 # feature maps beside the logits, or ["all"]
    top_k: int = 0                               # 0: no top-k; else 1..classes
    top_k_field: str = "top_k"                   # the protocol's name for top_k, for its errors
    outputs_named: bool = False                  # KServe: features are "outputs" (beside the logits), no "all"
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
    decode_s: float                  # checks and decoding, the first part of times.compute_input_s
    times: StageTimes
    batch_size: int                  # images in the ONNX Runtime run(s) this request was part of
    features: list[str] = field(default_factory=list)
    pixels: np.ndarray | None = None  # uint8 [N, 1, side, side]: the images as the model received them

    @property
    def queue_s(self) -> float:
        return self.times.queue_s

    @property
    def compute_s(self) -> float:
        """The ONNX Runtime run(s): what the protocols' own timings call compute."""
        return self.times.compute_infer_s


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

    def close(self) -> None:
        """After drain: stop the decode threads (requests still decoding there have been answered)."""
        self._decoder.shutdown(wait=False, cancel_futures=True)

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
        others all the same): a readiness probe must not send traffic to a replica missing a model. A model
        unloaded by a call, or one a load call failed to bring up, is not one to be served."""
        wanted = [model for model in self.store.models.values() if model.wanted]
        return bool(wanted) and all(model.ready for model in wanted) and not self.draining

    def models(self) -> list[ServedModel]:
        """Every model the server serves or was asked to, ready or not."""
        return list(self.store.models.values())

    def model_ready(self, name: str, version: int = 0) -> bool:
        """Whether `name` (at `version`; 0: any) is loaded and ready; False for a model not served."""
        model, _ = self.served(name)
        return bool(model and model.ready and (not version or version in model.versions))

    def model(self, name: str, version: int = 0) -> Servable:
        """A version that serves: `version`, or the newest (NotFound naming those served, or Unavailable with the
        reason); for NAME.logits, that version's logits-only view."""
        model, view = self.served(name)
        if view:
            return self.store.get(model.name, version).logits_view
        return self.store.get(name, version)

    def described(self, name: str) -> ServedModel:
        """A model whether or not it is ready (for NAME.logits, NAME's), for metadata and readiness questions."""
        model, _ = self.served(name)
        if model is None:
            raise NotFound(f"model {quote(name)} is not served; models: {', '.join(self.store.models) or 'none'}")
        return model

    def served(self, name: str) -> tuple[ServedModel | None, bool]:
        """The model `name` refers to (None: none), and whether `name` is its logits-only view."""
        model = self.store.models.get(name)
        if model is None and name.endswith(LOGITS_VIEW_SUFFIX):
            model = self.store.models.get(name[:-len(LOGITS_VIEW_SUFFIX)])
            return model, model is not None
        return model, False

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
        served, _ = self.served(request.model)
        label = request.model if served else "<unknown>"     # a view counts apart from its model
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
            if result:
                version = result.version
            else:       # a refusal counts for the version asked for when it serves, else for none chosen (0)
                version = request.version if served and request.version in served.versions else 0
            self.metrics.record(label, version, status, time.perf_counter() - start,
                                *((result.outputs[LOGITS].shape[0], result.times) if result else ()))

    async def _infer(self, request: InferRequest, start: float) -> InferResult:
        model = self.model(request.model, request.version)
        model.enter()         # from here until answered: a version swapped out meanwhile drains before its release
        try:
            return await self._infer_on(model, request, start)
        finally:
            model.leave()

    async def _infer_on(self, model: Servable, request: InferRequest, start: float) -> InferResult:
        labels = model.version.labels
        top_k = check_top_k(request.top_k, len(labels), request.top_k_field) if request.top_k else 0
        features = requested_features(model, list(request.features), request.outputs_named)
        limit, side = model.batcher.options.max_batch_size, model.version.input_side
        batch = check_batch(request.batch, limit, side) if request.batch is not None else None
        n_images = len(batch) if batch is not None else len(request.images)
        self.check_response_size(model, n_images, features, request.feature_itemsize, top_k)
        if batch is not None:
            pixels = batch
        elif sum(len(i.data) for i in request.images if isinstance(i, EncodedImage)) <= INLINE_DECODE_BYTES:
            pixels = decode_images(request.images, limit, side)
        else:
            with model.batcher.arriving():
                pixels = await asyncio.get_running_loop().run_in_executor(
                    self._decoder, decode_images, request.images, limit, side)
        decode_s = time.perf_counter() - start
        ranking = [RANKING, RANKED_PROBABILITIES] if top_k else []
        result = await model.batcher.infer(pixels, [LOGITS, *ranking, *features], request.deadline, request.caller)
        returned = time.perf_counter()
        outputs, top_indices, top_probabilities = result.outputs, None, None
        if top_k:      # ranked once per run by the batcher; this request's top-k is a slice
            top_indices, top_probabilities = outputs.pop(RANKING)[:, :top_k], outputs.pop(RANKED_PROBABILITIES)[:, :top_k]
        times = StageTimes(queue_s=result.queue_s, compute_input_s=decode_s + result.input_s,
                           compute_infer_s=result.infer_s,
                           compute_output_s=result.output_s + time.perf_counter() - returned)
        return InferResult(model.name, model.version.version, labels, outputs, top_indices, top_probabilities,
                           decode_s, times, result.batch_size, features, pixels)

    def check_response_size(self, model: Servable, n_images: int, features: list[str], itemsize: int,
                            top_k: int) -> None:
        """Refuse before compute a response that would exceed the message limit, saying by how much."""
        values = model.version.output_values
        overhead = RESPONSE_OVERHEAD_BYTES
        per_image = overhead["per_image"] + top_k * overhead["per_prediction"] + sum(
            values[name] * itemsize + overhead["per_output"] for name in [LOGITS, *features])
        size = n_images * per_image
        if size > self.max_response_bytes:
            fits = max(self.max_response_bytes // per_image, 0)
            raise ResourceExhausted(
                f"the response would be about {size / 2**20:.1f} MiB, over the server's message limit of "
                f"{self.max_response_bytes / 2**20:.0f} MiB; {fits} image(s) with these outputs fit. Ask for fewer "
                f"images or feature maps, use float16 feature maps, or raise --max-message-mb")


def check_top_k(top_k: int, classes: int, field: str = "top_k") -> int:
    if not 1 <= top_k <= classes:
        raise InvalidArgument(f"{field} {top_k} is out of range: it must be between 1 and {classes} "
                              f"(the number of classes)")
    return top_k


def requested_features(model: Servable, requested: list[str], outputs_named: bool = False) -> list[str]:
    """The requested feature maps in the model's order: by cnnserve.v1's rule ("all" means every one), or
    as KServe's outputs, where the logits are an output too and "all" is just a name."""
    if outputs_named:
        available = [LOGITS, *model.feature_names]
        unknown = [name for name in requested if name not in available]
        if unknown:
            raise NotFound(f"model {model.name} has no output {', '.join(quote(n) for n in unknown[:10])}; "
                           f"it has: {', '.join(available)}")
        return [name for name in model.feature_names if name in requested]
    try:
        return select_features(model.feature_names, requested)
    except UnknownFeatures as error:
        raise NotFound(f"model {model.name} has {error}") from None


def check_count(n: int, limit: int, field: str = "images") -> None:
    if n == 0:
        raise InvalidArgument(f"{field} is empty: send at least one image")
    if n > limit:
        raise InvalidArgument(f"{field} has {n} images; the limit for one request is {limit}")


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


def check_batch(batch: PixelBatch, limit: int, side: int) -> np.ndarray:
    """The one check of a whole batch of raw pixels, whichever protocol carried it: uint8, [N, 1, side, side]
    or [N, side, side], the bytes or values the shape needs, 1..limit images; no allocation before it passes."""
    field, shape = batch.field, list(batch.shape)
    if batch.dtype != batch.uint8_name:
        raise InvalidArgument(f"{field}.dtype {quote(batch.dtype)} must be {batch.uint8_name} (pixels 0..255)")
    wanted = f"[N, 1, {side}, {side}] or [N, {side}, {side}]"
    if not 3 <= len(shape) <= 4 or min(shape) <= 0:
        raise InvalidArgument(f"{field}.shape {shape[:8]} must be {wanted}")
    if max(shape) > 2**63:      # JSON integers are unbounded; no message may print one whole
        raise InvalidArgument(f"{field}.shape has a dimension over 2^63; it must be {wanted}")
    count = math.prod(shape)      # Python ints: exact however large the client's dimensions
    if batch.data is not None and count != len(batch.data):
        raise InvalidArgument(f"{field}.shape {shape} needs {count:,} bytes; {field}.data has {len(batch.data):,}")
    sent = len(batch.values) if batch.values is not None else 0
    if batch.data is None and count != sent:
        raise InvalidArgument(f"{field}.shape {shape} needs {count:,} values; the request has {sent:,}")
    if shape[-2:] != [side, side] or len(shape) == 4 and shape[1] != 1:
        raise InvalidArgument(f"{field}.shape {shape} must be {wanted}")
    check_count(shape[0], limit, field)
    if batch.data is not None:
        return np.frombuffer(batch.data, dtype=np.uint8).reshape(shape[0], 1, side, side)
    values = np.asarray(batch.values, dtype=np.int64)
    if values.min() < 0 or values.max() > 255:
        raise InvalidArgument(f"{field}: {batch.uint8_name} values must be in 0..255")
    return values.astype(np.uint8).reshape(shape[0], 1, side, side)
