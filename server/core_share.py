"""How `--workers` processes share the cores: a lone request gets all of them, loaded workers their share.

Each worker's sessions run with cores / workers ONNX Runtime intra-op threads, so that busy workers do
not oversubscribe the cores (`server/workers.py`). But a request that finds the other workers idle would
then run on one worker's share of the machine, slower than it could. So a worker also opens each model
with all the cores' threads (`RuntimeOptions.solo_threads`), and a run long enough for the compute
thread (`server/batcher.py`) takes that session when no other worker has a request in flight (measured
by `python bench/side_by_side.py --a "--workers 2 --threads 1" --b "--workers 2"`; bench/HISTORY.md,
a005dad). The price is memory: each model's weights are held by two sessions.

The workers tell each other through one byte each in shared memory (a `multiprocessing.RawArray`
made by the parent): a worker sets its byte while its data plane has requests in flight. A glance at
the others' bytes costs far less than a run, and a stale glance costs at most one run with more
threads than cores, so there is no lock. A worker killed mid-request leaves its byte set until the
parent starts its replacement, which clears it; meanwhile the others keep to their share.
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
