"""The batcher alone, over a fake runtime: no server, no sockets, no ONNX Runtime.

The fake returns, for each image, its first pixel as the logit row, so a request can check it
got its own rows back; `gate` holds a run open so that later requests queue behind it.
"""
import threading
import time

import numpy as np
import pytest

from server.batcher import Batcher, BatchingOptions
from server.errors import Cancelled, DeadlineExceeded, ResourceExhausted


class FakeRuntime:
    output_names = ["logits", "fc1"]

    def __init__(self):
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.running = threading.Event()
        self.fail_next: Exception | None = None

    def run(self, images, outputs):
        self.running.set()
        self.gate.wait(5)
        self.batches.append(len(images))
        if self.fail_next:
            error, self.fail_next = self.fail_next, None
            raise error
        first = images[:, 0, 0, 0].astype(np.float32)
        return {name: np.repeat(first[:, None], 10, axis=1) for name in outputs}


def images(value: int, n: int = 1) -> np.ndarray:
    return np.full((n, 1, 28, 28), value, dtype=np.uint8)


@pytest.fixture
def fake():
    return FakeRuntime()


def start(fn, *args, **kwargs):
    """Run fn in a thread; the returned dict gets 'result' or 'error'."""
    outcome = {}

    def target():
        try:
            outcome["result"] = fn(*args, **kwargs)
        except Exception as error:
            outcome["error"] = error

    thread = threading.Thread(target=target)
    thread.start()
    outcome["thread"] = thread
    return outcome


def hold_first_run(batcher, fake):
    """Start a request whose run blocks until fake.gate is set; return its outcome."""
    fake.gate.clear()
    first = start(batcher.infer, images(1), ["logits"])
    assert fake.running.wait(5)
    return first


def wait_queued(batcher, n):
    deadline = time.monotonic() + 5
    while len(batcher._queue) < n:
        assert time.monotonic() < deadline, "requests did not queue"
        time.sleep(0.001)


def test_a_lone_request_runs_at_once_and_gets_its_rows(fake):
    result = Batcher("m", fake, BatchingOptions()).infer(images(7, 3), ["logits"])
    assert result.batch_size == 3 and result.outputs["logits"].shape == (3, 10)
    assert (result.outputs["logits"] == 7).all() and list(result.outputs) == ["logits"]


def test_queued_requests_merge_in_order_up_to_max_batch_size(fake):
    batcher = Batcher("m", fake, BatchingOptions(max_batch_size=4, max_queue_delay_s=0))
    first = hold_first_run(batcher, fake)
    waiting = []
    for value in range(10, 15):           # five 1-image requests queue while the first runs
        waiting.append(start(batcher.infer, images(value), ["logits", "fc1"]))
        wait_queued(batcher, len(waiting))
    fake.gate.set()
    for outcome in [first, *waiting]:
        outcome["thread"].join(5)
    assert fake.batches == [1, 4, 1]
    for value, outcome in zip(range(10, 15), waiting):
        assert (outcome["result"].outputs["logits"] == value).all() and set(outcome["result"].outputs) == {"logits", "fc1"}
    assert [o["result"].batch_size for o in waiting] == [4, 4, 4, 4, 1]


def test_a_full_queue_refuses_at_once(fake):
    batcher = Batcher("m", fake, BatchingOptions(max_queue_images=3))
    first = hold_first_run(batcher, fake)
    queued = start(batcher.infer, images(2, 2), ["logits"])
    wait_queued(batcher, 1)
    with pytest.raises(ResourceExhausted, match="limit is 3"):
        batcher.infer(images(3, 2), ["logits"])
    fake.gate.set()
    first["thread"].join(5), queued["thread"].join(5)
    assert "result" in queued


def test_expired_and_cancelled_requests_are_dropped_before_compute(fake):
    batcher = Batcher("m", fake, BatchingOptions(max_queue_delay_s=0))
    first = hold_first_run(batcher, fake)
    expired = start(batcher.infer, images(2), ["logits"], deadline=time.monotonic() + 0.01)
    wait_queued(batcher, 1)
    cancelled = start(batcher.infer, images(3), ["logits"], is_active=lambda: False)
    wait_queued(batcher, 2)
    time.sleep(0.02)
    fake.gate.set()
    for outcome in (first, expired, cancelled):
        outcome["thread"].join(5)
    assert isinstance(expired["error"], DeadlineExceeded) and isinstance(cancelled["error"], Cancelled)
    assert fake.batches == [1], "neither reached the runtime"


@pytest.mark.parametrize("failure", [RuntimeError("onnxruntime failed"), KeyError("an output the graph lacks")])
def test_an_exception_fails_exactly_its_batch_and_the_next_request_runs(fake, failure):
    batcher = Batcher("m", fake, BatchingOptions(max_queue_delay_s=0))
    first = hold_first_run(batcher, fake)
    doomed = [start(batcher.infer, images(v), ["logits"]) for v in (2, 3)]
    wait_queued(batcher, 2)
    fake.fail_next = None
    fake.gate.set()
    first["thread"].join(5)
    for outcome in doomed:
        outcome["thread"].join(5)
    # now a failing batch, then a healthy request on the same batcher
    fake.fail_next = failure
    with pytest.raises(type(failure)):
        batcher.infer(images(4), ["logits"])
    assert (batcher.infer(images(5), ["logits"]).outputs["logits"] == 5).all()
    assert not batcher._leading and not batcher._queue


def test_missing_output_in_the_runtime_result_does_not_wedge_the_model(fake):
    class Lacking(FakeRuntime):
        def run(self, images, outputs):
            return {}                       # metadata lists an output the graph does not have
    batcher = Batcher("m", Lacking(), BatchingOptions())
    for _ in range(3):
        with pytest.raises(KeyError):
            batcher.infer(images(1), ["logits"])
    assert not batcher._leading
