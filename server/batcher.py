"""Dynamic batching: concurrent requests for one model merged into one ONNX Runtime run.

One worker thread per model takes requests from a bounded queue. It runs at once what is
queued, up to `max_batch_size` images, but waits up to `max_queue_delay` for requests that are
already on their way (announced by `arriving()` while they are being decoded), so a lone
request never waits for company that is not coming, and a burst is merged.

The queue is bounded in images: when full, `submit` raises ResourceExhausted at once instead of
letting latency grow without limit. Requests whose deadline passed or whose client went away
are dropped before compute.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from server.errors import Cancelled, DeadlineExceeded, ResourceExhausted, Unavailable
from server.runtime import ModelRuntime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int = 64
    max_queue_delay_s: float = 0.002
    max_queue_images: int = 1024


@dataclass
class BatchResult:
    outputs: dict[str, np.ndarray]   # this request's rows of each output
    queue_s: float
    compute_s: float
    batch_size: int


@dataclass
class _Pending:
    images: np.ndarray
    outputs: list[str]
    deadline: float | None            # time.monotonic() value, or None
    is_active: Callable[[], bool]
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(self, name: str, runtime: ModelRuntime, options: BatchingOptions,
                 on_batch: Callable[[int, float], None] = lambda size, seconds: None):
        self.name, self.runtime, self.options, self.on_batch = name, runtime, options, on_batch
        self._queue: deque[_Pending] = deque()
        self._queued_images = 0
        self._arriving = 0
        self._closed = False
        self._changed = threading.Condition()
        self._worker = threading.Thread(target=self._serve, name=f"batcher-{name}", daemon=True)
        self._worker.start()

    @contextmanager
    def arriving(self):
        """Wrap the decoding of a request that will be submitted, so the worker knows to wait for it."""
        with self._changed:
            self._arriving += 1
        try:
            yield
        finally:
            with self._changed:
                self._arriving -= 1
                self._changed.notify()

    def submit(self, images: np.ndarray, outputs: list[str], deadline: float | None = None,
               is_active: Callable[[], bool] = lambda: True) -> Future:
        pending = _Pending(images, outputs, deadline, is_active)
        with self._changed:
            if self._closed:
                raise Unavailable(f"model {self.name} is shutting down")
            if self._queued_images + len(images) > self.options.max_queue_images:
                raise ResourceExhausted(
                    f"model {self.name}: the queue holds {self._queued_images} images and its limit is "
                    f"{self.options.max_queue_images}; retry later or send fewer images")
            self._queue.append(pending)
            self._queued_images += len(images)
            self._changed.notify()
        return pending.future

    def close(self) -> None:
        """Finish what is queued, then stop the worker."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._worker.join()

    def _take_batch(self) -> list[_Pending] | None:
        with self._changed:
            while not self._queue:
                if self._closed:
                    return None
                self._changed.wait()
            wait_until = self._queue[0].enqueued + self.options.max_queue_delay_s
            while (self._queued_images < self.options.max_batch_size and self._arriving
                   and (remaining := wait_until - time.monotonic()) > 0):
                self._changed.wait(remaining)
            batch, images = [], 0
            while self._queue and images + len(self._queue[0].images) <= self.options.max_batch_size:
                pending = self._queue.popleft()
                batch.append(pending)
                images += len(pending.images)
            if not batch:   # a single request larger than max_batch_size runs alone
                batch.append(self._queue.popleft())
            self._queued_images -= sum(len(p.images) for p in batch)
            return batch

    def _serve(self) -> None:
        while (batch := self._take_batch()) is not None:
            live = [p for p in batch if self._still_wanted(p)]
            if live:
                self._run(live)

    @staticmethod
    def _still_wanted(pending: _Pending) -> bool:
        if pending.deadline is not None and time.monotonic() >= pending.deadline:
            pending.future.set_exception(DeadlineExceeded("the deadline passed while the request was queued"))
        elif not pending.is_active():
            pending.future.set_exception(Cancelled("the client cancelled the request while it was queued"))
        else:
            return True
        return False

    def _run(self, batch: list[_Pending]) -> None:
        outputs = [name for name in self.runtime.output_names if any(name in p.outputs for p in batch)]
        images = batch[0].images if len(batch) == 1 else np.concatenate([p.images for p in batch])
        start = time.monotonic()
        try:
            results = self.runtime.run(images, outputs)
        except Exception as error:  # an ONNX Runtime failure fails this batch, not the worker
            log.exception("%s: ONNX Runtime failed on a batch of %d images", self.name, len(images))
            for pending in batch:
                pending.future.set_exception(error)
            return
        compute_s = time.monotonic() - start
        self.on_batch(len(images), compute_s)
        offset = 0
        for pending in batch:
            rows = slice(offset, offset + len(pending.images))
            offset = rows.stop
            pending.future.set_result(BatchResult({name: results[name][rows] for name in pending.outputs},
                                                  queue_s=start - pending.enqueued, compute_s=compute_s,
                                                  batch_size=len(images)))
