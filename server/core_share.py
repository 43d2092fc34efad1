"""How `--workers` processes share the cores: a lone request gets all of them, loaded workers their share.

Each worker's sessions run with cores / workers ONNX Runtime intra-op threads, so that busy workers do
not oversubscribe the cores (two workers of two threads each on 2 cores: resnet18 at concurrency 32
228 against 275 images/s, `server/workers.py`). But a request that finds the other workers idle would
then run on one worker's share of the machine (resnet18 alone: 10.7 ms p50 with one thread against
6.7 ms with two). So a worker also opens each model with all the cores' threads (`RuntimeOptions.
solo_threads`), and a run long enough for the compute thread (`server/batcher.py`) takes that session
when no other worker has a request in flight.

The workers tell each other through one byte each in shared memory (a `multiprocessing.RawArray`
made by the parent): a worker sets its byte while its data plane has requests in flight. A glance
at the others' bytes is a few hundred nanoseconds, and a stale glance costs at most one run with
more threads than cores, so there is no lock. (A worker killed mid-request leaves its byte set: the
others then keep to their share, as before this existed.)
"""
from __future__ import annotations

from collections.abc import MutableSequence


class CoreShare:
    """One worker's view of which workers are busy. Without `busy` (one process) it is always alone."""

    def __init__(self, busy: MutableSequence[int] | None = None, worker: int = 0):
        self._busy = busy
        self._worker = worker

    def set_busy(self, busy: bool) -> None:
        """This worker has requests in flight (True) or none (False)."""
        if self._busy is not None:
            self._busy[self._worker] = busy

    def alone(self) -> bool:
        """Whether no other worker has a request in flight."""
        if self._busy is None:
            return True
        return not any(busy for index, busy in enumerate(self._busy) if index != self._worker)
