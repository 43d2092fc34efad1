"""Dynamic batching: concurrent requests for one model merged into one ONNX Runtime run.

Requests queue on the server's event loop; each run takes the queued requests with the smallest
fair-queuing tags (start-time fair queuing over callers), up to `max_run_images` images, slicing a
larger request across runs, and answers each request with its own rows. Runs expected to be
shorter than `INLINE_RUN_S` run on the loop itself, where they are cheaper than a hand-off; longer
ones run on the model's compute thread while the loop keeps queueing, so batches grow with load
and a lone request starts at once. A run first waits, up to `max_queue_delay`, for requests on
their way: those being decoded (`arriving()`) and, since nothing arrives while an inline run holds
the loop, before an inline run those expected back from callers answered in the last `ACTIVE_CALLER_S`.
Admission is per caller, so a flood cannot lock a newcomer out. Expired and cancelled requests
are dropped before compute, and an exception fails only the run that raised.

The design and the measurements behind each choice: docs/batching.md.
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from cnnserve.spec import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_QUEUE_DELAY_US, LOGITS
from server.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from server.runtime import ModelRuntime

log = logging.getLogger(__name__)


QUEUED_BATCHES = 16   # by default a model's queue holds this many full batches of images
CALLER_BATCHES = 2    # ... of which one caller may hold this many
INLINE_RUN_S = 0.002  # runs expected to take less run on the loop, holding every other request (docs/batching.md)
ACTIVE_CALLER_S = 0.05   # a request answered this recently is expected back (closed-loop clients send again at once)
RANKING = "ranking"                            # derived: class indices, best logit first (ties: lower index) [N, C]
RANKED_PROBABILITIES = "ranked_probabilities"  # derived: their softmax probabilities, in that order [N, C]


@dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE     # the most images one request may hold
    max_queue_delay_s: float = DEFAULT_MAX_QUEUE_DELAY_US / 1e6
    max_queue_images: int = QUEUED_BATCHES * DEFAULT_MAX_BATCH_SIZE
    max_caller_images: int = CALLER_BATCHES * DEFAULT_MAX_BATCH_SIZE
    max_run_images: int = 0                          # the most images one ONNX Runtime run takes (0: max_batch_size)

    @property
    def run_images(self) -> int:
        return self.max_run_images or self.max_batch_size


@dataclass
class BatchResult:
    """A request's rows, and its time in the batcher as the stages of Triton's statistics (server/metrics.py
    `StageTimes`), each run's stages counting in full for every request in it."""
    outputs: dict[str, np.ndarray]   # this request's rows of each output
    queue_s: float                   # waiting for a run: before its first, and between the runs of a split request
    input_s: float                   # its runs' gathering of their requests' rows into one input array
    infer_s: float                   # its runs' ONNX Runtime time, with the hand-off to the compute thread and back
    output_s: float                  # its runs' ranking of the classes and splitting of the outputs into requests
    batch_size: int


@dataclass(order=True)
class _Request:
    tag: float                                        # fair-queuing finish tag: smaller runs first
    sequence: int                                     # ties: arrival order
    images: np.ndarray = field(compare=False)
    outputs: list[str] = field(compare=False)
    deadline: float | None = field(compare=False)     # a time.monotonic() value, or None
    caller: str = field(compare=False)
    future: asyncio.Future = field(compare=False)
    enqueued: float = field(compare=False, default_factory=time.perf_counter)   # the clock of the stage times
    taken: int = field(compare=False, default=0)          # rows already handed to runs
    parts: list = field(compare=False, default_factory=list)   # finished runs' rows, in order
    input_s: float = field(compare=False, default=0.0)    # the stages of the runs it was part of, summed
    infer_s: float = field(compare=False, default=0.0)
    output_s: float = field(compare=False, default=0.0)
    batch_size: int = field(compare=False, default=0)     # the largest run it was part of


class Batcher:
    def __init__(self, name: str, runtime: ModelRuntime, options: BatchingOptions,
                 on_batch: Callable[[int, float, float, float], None] = lambda size, input_s, infer_s, output_s: None,
                 run_clock: Callable[[], float] = time.perf_counter):
        self.name, self.runtime, self.options, self.on_batch = name, runtime, options, on_batch
        # What a run's cost is measured with (a unit test's fake runtime brings a clock on which a run takes
        # exactly as long as the test says, whatever the machine's load does to its sleep).
        self._run_clock = run_clock
        self._queue: list[_Request] = []                  # a heap by tag
        self._queued_images = 0
        self._caller_images: defaultdict[str, int] = defaultdict(int)
        self._caller_tag: dict[str, float] = {}           # each queued caller's last finish tag
        self._virtual_time = 0.0
        self._sequence = itertools.count()
        self._arriving = 0
        self._expected: dict[str, list] = {}              # caller -> [requests expected back, until (monotonic)]
        self._expected_total = 0                          # their sum (forgotten callers' until the next prune)
        self._next_prune = 0.0
        self._waiting = False                             # the scheduler is waiting for company
        self._closed = False
        self._changed: asyncio.Event | None = None        # created on the loop, at the first request
        self._scheduler: asyncio.Task | None = None
        self._compute = ThreadPoolExecutor(1, thread_name_prefix=f"compute-{name}")
        self._image_s: float | None = None                # recent compute seconds per image (unknown at first)

    @contextmanager
    def arriving(self):
        """Wrap a request's decoding off the loop, so a batch about to start waits for it (up to the delay)."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1
            self._notify()

    async def infer(self, images: np.ndarray, outputs: list[str], deadline: float | None = None,
                    caller: str = "") -> BatchResult:
        """Run `images` (uint8 [N, 1, side, side]) for the named outputs, batched with concurrent requests."""
        if self._closed:
            raise Unavailable(f"model {self.name} is shutting down")
        n = len(images)
        if caller in self._caller_images:           # a newcomer is always admitted
            if self._queued_images + n > self.options.max_queue_images:
                raise ResourceExhausted(
                    f"model {self.name}: the queue holds {self._queued_images} images and its limit is "
                    f"{self.options.max_queue_images}; retry later or send fewer images")
            contended = self._queued_images + n > self.options.max_queue_images // 2
            if contended and self._caller_images[caller] + n > self.options.max_caller_images:
                raise ResourceExhausted(
                    f"model {self.name}: this connection has {self._caller_images[caller]} images queued and one "
                    f"caller's share is {self.options.max_caller_images}; wait for answers before sending more")
        tag = max(self._virtual_time, self._caller_tag.get(caller, 0.0)) + n
        self._caller_tag[caller] = tag
        self._caller_images[caller] += n
        self._queued_images += n
        request = _Request(tag, next(self._sequence), images, outputs, deadline, caller,
                           asyncio.get_running_loop().create_future())
        expected = self._expected.get(caller)
        if expected and expected[0]:                # one of the requests expected back from this caller
            expected[0] -= 1
            self._expected_total -= 1
        heapq.heappush(self._queue, request)
        self._start_scheduler()
        if not self._waiting or not self._expected_total or self._queued_images >= self.options.run_images:
            self._notify()
        return await request.future          # cancelled with the caller's task: dropped before compute

    def close(self) -> None:
        """Refuse new requests; those already queued still run."""
        self._closed = True

    def shutdown(self) -> None:
        """After close() and drain: stop the scheduler and the compute thread, and let go of the runtime. The
        scheduler task and this batcher form a reference cycle that waits for the garbage collector (forever,
        for objects set aside at start-up by gc.freeze): a released version's ONNX Runtime sessions, and their
        memory, must not wait with it."""
        if self._scheduler:
            self._scheduler.cancel()
        self._compute.shutdown(wait=False)
        self.runtime = None

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def _start_scheduler(self) -> None:
        if self._scheduler is None:
            self._changed = asyncio.Event()
            self._scheduler = asyncio.get_running_loop().create_task(self._schedule(), name=f"batcher-{self.name}")

    async def _schedule(self) -> None:
        """Forever: wait for work, take a batch, run it on the compute thread."""
        while True:
            if not self._queue:
                self._changed.clear()
                await self._changed.wait()
                continue
            try:
                await self._wait_for_company()
                await self._run_next()
            except Exception:   # never let the model's only scheduler die: later requests would hang
                log.exception("%s: the batch scheduler failed; it goes on", self.name)

    async def _run_next(self) -> None:
        """Take a batch and run it. The batch lives in this frame only: its requests hold their outputs, which
        may be views of ONNX Runtime's memory, and the scheduler's own frame lives as long as the batcher (after a
        model version is released, until the garbage collector finds the batcher's reference cycle)."""
        batch = self._take_batch()
        if batch:
            await self._run(batch)

    async def _wait_for_company(self) -> None:
        """Hold the next run, up to the delay after the first request in line, while more requests are on their
        way (docs/batching.md, "Waiting for company"); return as soon as none is, or the run is full."""
        deadline = self._queue[0].enqueued + self.options.max_queue_delay_s
        self._forget_the_gone()
        try:
            while self._company_expected() and (remaining := deadline - time.perf_counter()) > 0:
                self._waiting = True      # infer() wakes us when no more is expected back (or the run is full)
                self._changed.clear()
                timer = asyncio.get_running_loop().call_later(remaining, self._changed.set)
                try:
                    await self._changed.wait()
                finally:
                    timer.cancel()
        finally:
            self._waiting = False

    def _company_expected(self) -> bool:
        """Whether the next run should wait: while requests are being decoded off the loop; and while an inline
        run would go without requests expected back (docs/batching.md, "Waiting for company")."""
        if not self._queue or self._queued_images >= self.options.run_images:
            return False
        if self._arriving:
            return True
        if self._image_s is None or self._image_s * self._queued_images >= INLINE_RUN_S:
            return False                               # a compute-thread run: requests queue while it runs
        return self._expected_total > 0

    def _expect_back(self, caller: str, until: float) -> None:
        expected = self._expected.setdefault(caller, [0, until])
        expected[0] += 1
        expected[1] = until
        self._expected_total += 1

    def _forget_the_gone(self) -> None:
        """Drop what is expected from callers not answered for ACTIVE_CALLER_S (checked every quarter of it)."""
        now = time.monotonic()
        if now >= self._next_prune:
            for caller in [caller for caller, (_, until) in self._expected.items() if until <= now]:
                self._expected_total -= self._expected.pop(caller)[0]
            self._next_prune = now + ACTIVE_CALLER_S / 4

    def _take_batch(self) -> list[tuple[_Request, int, int]]:
        """(request, first row, stop row) slices with the smallest tags, at most max_run_images rows in all."""
        batch, images, now = [], 0, time.monotonic()
        while self._queue and images < self.options.run_images:
            request = self._queue[0]
            if request.future.done() or (not request.taken and self._expired(request, now)):
                heapq.heappop(self._queue)           # the client went away, or the deadline passed, while queued
                self._release(request, len(request.images) - request.taken)
                continue
            if not request.taken:
                self._virtual_time = max(self._virtual_time, request.tag - len(request.images))
            rows = min(len(request.images) - request.taken, self.options.run_images - images)
            batch.append((request, request.taken, request.taken + rows))
            request.taken += rows
            images += rows
            self._release(request, rows)
            if request.taken == len(request.images):
                heapq.heappop(self._queue)
        return batch

    @staticmethod
    def _expired(request: _Request, now: float) -> bool:
        if request.deadline is not None and now >= request.deadline:
            request.future.set_exception(DeadlineExceeded("the deadline passed while the request was queued"))
            return True
        return False

    def _release(self, request: _Request, rows: int) -> None:
        self._queued_images -= rows
        self._caller_images[request.caller] -= rows
        if not self._caller_images[request.caller]:      # nothing of this caller is queued: forget it
            del self._caller_images[request.caller]
            del self._caller_tag[request.caller]

    def _compute_run(self, images: np.ndarray, outputs: list[str], ranked: bool,
                     on_compute_thread: bool = False) -> tuple[dict[str, np.ndarray], float, float]:
        """The outputs, and the seconds ONNX Runtime's run and then the ranking took (without the hand-off to the
        compute thread and back, which the choice between inline and thread must not count: a run would stay on
        the thread for its cost)."""
        start = self._run_clock()
        # a run worth a thread hand-off is worth spreading over idle workers' cores (server/core_share.py)
        results = self.runtime.run(images, outputs, may_use_all_cores=on_compute_thread)
        ran = self._run_clock()
        if ranked:
            results[RANKING], results[RANKED_PROBABILITIES] = rank_classes(results[LOGITS])
        return results, ran - start, self._run_clock() - ran

    async def _run(self, batch: list[tuple[_Request, int, int]]) -> None:
        """Run one batch; any failure (ONNX Runtime's, or a missing output) fails its requests, not the model."""
        requests = [request for request, _, _ in batch]
        try:
            start = time.perf_counter()
            wanted = {name for request in requests for name in request.outputs}
            ranked = RANKING in wanted
            outputs = [name for name in self.runtime.output_names if name in wanted or (ranked and name == LOGITS)]
            slices = [request.images[first:stop] for request, first, stop in batch]
            images = slices[0] if len(slices) == 1 else np.concatenate(slices)
            gathered = time.perf_counter()
            if self._image_s is not None and self._image_s * len(images) < INLINE_RUN_S:
                results, run_s, rank_s = self._compute_run(images, outputs, ranked)
            else:
                results, run_s, rank_s = await asyncio.get_running_loop().run_in_executor(
                    self._compute, self._compute_run, images, outputs, ranked, True)
            ran = time.perf_counter()
            per_image = (run_s + rank_s) / len(images)
            self._image_s = per_image if self._image_s is None else 0.9 * self._image_s + 0.1 * per_image
            answers, offset = [], 0            # (request, its outputs) for those whose last rows ran here
            for request, first, stop in batch:
                rows = slice(offset, offset + stop - first)
                offset = rows.stop
                request.parts.append({name: results[name][rows] for name in request.outputs})
                request.batch_size = max(request.batch_size, len(images))
                if stop == len(request.images):
                    parts = request.parts
                    answers.append((request, parts[0] if len(parts) == 1 else
                                    {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}))
            done = time.perf_counter()
            input_s, infer_s, output_s = gathered - start, ran - gathered - rank_s, rank_s + done - ran
            self.on_batch(len(images), input_s, infer_s, output_s)
            for request in requests:
                request.input_s += input_s
                request.infer_s += infer_s
                request.output_s += output_s
        except Exception as error:
            log.exception("%s: a batch of %d requests failed", self.name, len(batch))
            for request in requests:
                if not request.future.done():
                    request.future.set_exception(error)
            return
        expected_until = time.monotonic() + ACTIVE_CALLER_S
        for request, outputs in answers:
            if not request.future.done():
                in_runs = request.input_s + request.infer_s + request.output_s
                request.future.set_result(BatchResult(outputs, done - request.enqueued - in_runs, request.input_s,
                                                      request.infer_s, request.output_s, request.batch_size))
                self._expect_back(request.caller, expected_until)


def rank_classes(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's classes, best logit first (ties: the lower index), and their softmax probabilities in that order."""
    ranking = np.argsort(-logits, axis=1, kind="stable")
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return ranking, np.take_along_axis(probabilities, ranking, axis=1)
