"""A fake ModelRuntime for the unit tests of the batcher and the data plane: no ONNX Runtime, no files.

Imported as `from fakes import FakeRuntime`: pytest puts tests/ on sys.path (rootdir-based "prepend"
import mode, tests/ being no package), whether it runs one file or the whole suite.
"""
import threading
import time

import numpy as np


def logits_of(value: int) -> np.ndarray:
    """The fake's logits for an image whose first pixel is `value`: arange(10) × (1 + value), so a request can
    tell its own rows, and the classes rank 9, 8, … 0."""
    return np.arange(10, dtype=np.float32) * (1 + value)


class FakeRuntime:
    """Outputs derived from each image's first pixel: `logits` (logits_of), and the feature maps `fc1` [10] and
    `conv1` [2, 3, 3] filled with it. A run can be held open (`gate`), slowed (`delay`) or made to fail."""
    output_names = ["logits", "fc1", "conv1"]

    def __init__(self):
        self.batches: list[list[int]] = []      # the first pixel of each image, per run
        self.gate = threading.Event()            # cleared: a run waits (up to 5 s) until it is set again
        self.gate.set()
        self.running = threading.Event()         # set once a run has started
        self.on_run = lambda: None               # called as each run starts
        self.failure: Exception | None = None    # raised by any run that holds an image of value 2
        self.delay = 0.0                         # seconds each run takes
        self.all_cores: list[bool] = []          # per run: whether it might take every core (server/core_share.py)
        self._ran_s = 0.0                        # the runs' `delay`s, in all: the time on `clock`

    def clock(self) -> float:
        """A clock on which each run takes exactly its `delay` and nothing else passes: the batcher's clock for run
        costs in the unit tests (Batcher's `run_clock`), so a loaded machine's late wake-ups and preemptions do
        not move a run from the event loop to the compute thread."""
        return self._ran_s

    def run(self, images, outputs, may_use_all_cores=False):
        self.all_cores.append(may_use_all_cores)
        self.running.set()
        self.on_run()
        self.gate.wait(5)
        time.sleep(self.delay)
        self._ran_s += self.delay
        self.batches.append(images[:, 0, 0, 0].tolist())
        if self.failure and (images[:, 0, 0, 0] == 2).any():
            raise self.failure
        first = images[:, 0, 0, 0].astype(np.float32)
        values = {"logits": np.arange(10, dtype=np.float32) * (1 + first[:, None]),
                  "fc1": np.repeat(first[:, None], 10, axis=1),
                  "conv1": np.broadcast_to(first[:, None, None, None], (len(images), 2, 3, 3)).copy()}
        return {name: values[name] for name in outputs}
