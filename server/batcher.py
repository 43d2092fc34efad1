"""Dynamic batching: concurrent requests for one model merged into one ONNX Runtime run.

There is no batching thread. The request threads take turns as the *leader* (the
leader/followers pattern): a request that finds no run in progress leads at once, on its own
thread, so a lone request pays no thread hand-off. While a run is in progress, new requests
queue; when it ends, the leader passes the lead to the thread of the oldest queued request,
which runs everything queued, up to `max_batch_size` images. Before a run, the leader waits up
to `max_queue_delay` for requests that are already on their way (announced by `arriving()`
while they are decoded), never for company that is not coming.

The queue is bounded in images: when full, `infer` raises ResourceExhausted at once instead of
letting latency grow without limit. Requests whose deadline passed or whose client went away
are dropped before compute.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from cnnserve.spec import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_QUEUE_DELAY_US
from server.errors import Cancelled, DeadlineExceeded, ResourceExhausted, Unavailable
from server.runtime import ModelRuntime

log = logging.getLogger(__name__)


QUEUED_BATCHES = 16   # by default a model's queue holds this many full batches of images


@dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_queue_delay_s: float = DEFAULT_MAX_QUEUE_DELAY_US / 1e6
    max_queue_images: int = QUEUED_BATCHES * DEFAULT_MAX_BATCH_SIZE


@dataclass
class BatchResult:
    outputs: dict[str, np.ndarray]   # this request's rows of each output
    queue_s: float
    compute_s: float
    batch_size: int


@dataclass
class _Arrival:
    pending: bool = True


@dataclass
class _Request:
    images: np.ndarray
    outputs: list[str]
    deadline: float | None            # a time.monotonic() value, or None
    is_active: Callable[[], bool]
    enqueued: float = field(default_factory=time.monotonic)
    wake: threading.Event = field(default_factory=threading.Event)   # finished, or handed the lead
    result: BatchResult | None = None
    error: Exception | None = None

    def finish(self, result: BatchResult | None = None, error: Exception | None = None) -> None:
        self.result, self.error = result, error
        self.wake.set()

    @property
    def finished(self) -> bool:
        return self.result is not None or self.error is not None


class Batcher:
    def __init__(self, name: str, runtime: ModelRuntime, options: BatchingOptions,
                 on_batch: Callable[[int, float], None] = lambda size, seconds: None):
        self.name, self.runtime, self.options, self.on_batch = name, runtime, options, on_batch
        self._queue: deque[_Request] = deque()
        self._queued_images = 0
        self._arriving = 0
        self._leading = False              # a thread is leading: taking or running a batch
        self._closed = False
        self._changed = threading.Condition()

    @contextmanager
    def arriving(self):
        """Wrap the decoding of a request, so a leader knows to wait for it; pass the yielded
        arrival to `infer`, which ends it as the request joins the queue."""
        arrival = _Arrival()
        with self._changed:
            self._arriving += 1
        try:
            yield arrival
        finally:
            with self._changed:
                self._end_arrival(arrival)

    def _end_arrival(self, arrival: _Arrival | None) -> None:
        if arrival is not None and arrival.pending:
            arrival.pending = False
            self._arriving -= 1
            self._changed.notify_all()

    def infer(self, images: np.ndarray, outputs: list[str], deadline: float | None = None,
              is_active: Callable[[], bool] = lambda: True, arrival: _Arrival | None = None) -> BatchResult:
        """Run `images` (uint8 [N, 1, 28, 28]) for the named outputs, batched with concurrent requests."""
        request = _Request(images, outputs, deadline, is_active)
        with self._changed:
            self._end_arrival(arrival)
            if self._closed:
                raise Unavailable(f"model {self.name} is shutting down")
            if self._queued_images + len(images) > self.options.max_queue_images:
                raise ResourceExhausted(
                    f"model {self.name}: the queue holds {self._queued_images} images and its limit is "
                    f"{self.options.max_queue_images}; retry later or send fewer images")
            self._queue.append(request)
            self._queued_images += len(images)
            self._changed.notify_all()
            lead = not self._leading
            self._leading = True
        if not lead:
            request.wake.wait()
        try:
            while not request.finished:      # leading: run batches until this request is done
                self._run(self._take_batch())
        finally:                             # whatever happened, the next queued request must lead
            self._pass_lead()
        if request.error:
            raise request.error
        return request.result

    def close(self) -> None:
        """Refuse new requests; those already queued are finished by their own threads."""
        with self._changed:
            self._closed = True

    def _pass_lead(self) -> None:
        """Called by a leader whose own request is finished: wake the oldest queued request's thread."""
        with self._changed:
            if self._queue:
                self._queue[0].wake.set()
            else:
                self._leading = False

    def _take_batch(self) -> list[_Request]:
        with self._changed:
            wait_until = self._queue[0].enqueued + self.options.max_queue_delay_s
            while (self._queued_images < self.options.max_batch_size and self._arriving
                   and (remaining := wait_until - time.monotonic()) > 0):
                self._changed.wait(remaining)
            batch, images = [self._queue.popleft()], 0   # a request larger than max_batch_size runs alone
            images = len(batch[0].images)
            while self._queue and images + len(self._queue[0].images) <= self.options.max_batch_size:
                batch.append(self._queue.popleft())
                images += len(batch[-1].images)
            self._queued_images -= images
        return [r for r in batch if self._still_wanted(r)]

    @staticmethod
    def _still_wanted(request: _Request) -> bool:
        if request.deadline is not None and time.monotonic() >= request.deadline:
            request.finish(error=DeadlineExceeded("the deadline passed while the request was queued"))
        elif not request.is_active():
            request.finish(error=Cancelled("the client cancelled the request while it was queued"))
        else:
            return True
        return False

    def _run(self, batch: list[_Request]) -> None:
        """Run one batch; any failure (ONNX Runtime's, or a missing output) fails this batch, not the model."""
        if not batch:
            return
        try:
            outputs = [name for name in self.runtime.output_names if any(name in r.outputs for r in batch)]
            images = batch[0].images if len(batch) == 1 else np.concatenate([r.images for r in batch])
            start = time.monotonic()
            results = self.runtime.run(images, outputs)
            compute_s = time.monotonic() - start
            self.on_batch(len(images), compute_s)
            finished, offset = [], 0
            for request in batch:
                rows = slice(offset, offset + len(request.images))
                offset = rows.stop
                finished.append(BatchResult({name: results[name][rows] for name in request.outputs},
                                            queue_s=start - request.enqueued, compute_s=compute_s,
                                            batch_size=len(images)))
        except Exception as error:
            log.exception("%s: a batch of %d requests failed", self.name, len(batch))
            for request in batch:
                request.finish(error=error)
            return
        for request, result in zip(batch, finished):
            request.finish(result)
