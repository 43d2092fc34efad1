"""The batcher alone, over a fake runtime (tests/fakes.py): no server, no sockets, no ONNX Runtime.

The fake's outputs follow each image's first pixel, so a request can check it got its own rows
back; `gate` holds a run open (on the compute thread) so that later requests queue behind it.
Each test is one asyncio.run, as the server's event loop would run it.
"""
import asyncio
import time

import numpy as np
import pytest
from fakes import FakeRuntime, logits_of

from server import batcher as batcher_module
from server.batcher import Batcher, BatchingOptions
from server.errors import DeadlineExceeded, ResourceExhausted


def images(value: int, n: int = 1) -> np.ndarray:
    return np.full((n, 1, 28, 28), value, dtype=np.uint8)


def requests_queued(batcher: Batcher) -> int:
    """Requests waiting for (the rest of) a run."""
    return len(batcher._queue)


def remembered_callers(batcher: Batcher) -> int:
    """Callers the batcher keeps anything about: those with requests queued, or expected back."""
    return len(batcher._expected) + len(batcher._caller_images)


@pytest.fixture
def fake():
    return FakeRuntime()


async def hold_first_run(batcher: Batcher, fake: FakeRuntime) -> asyncio.Task:
    """Start a request whose run blocks on the compute thread until fake.gate is set."""
    fake.gate.clear()
    first = asyncio.create_task(batcher.infer(images(1), ["logits"], caller="first"))
    while not fake.running.is_set():
        await asyncio.sleep(0.001)
    return first


async def queue(batcher: Batcher, *requests) -> list[asyncio.Task]:
    """Queue (value, n_images, caller) requests in this order; return their tasks."""
    tasks, already = [], requests_queued(batcher)
    for value, n, caller in requests:
        tasks.append(asyncio.create_task(batcher.infer(images(value, n), ["logits", "fc1"], caller=caller)))
        while requests_queued(batcher) < already + len(tasks):
            await asyncio.sleep(0)
    return tasks


def release(fake: FakeRuntime) -> None:
    fake.gate.set()


def test_a_lone_request_runs_at_once_and_gets_its_rows(fake):
    async def main():
        return await Batcher("m", fake, BatchingOptions(), run_clock=fake.clock).infer(images(7, 3), ["logits"])
    result = asyncio.run(main())
    assert result.batch_size == 3 and result.outputs["logits"].shape == (3, 10)
    assert (result.outputs["logits"] == logits_of(7)).all() and list(result.outputs) == ["logits"]


def test_queued_requests_merge_in_arrival_order_up_to_max_batch_size(fake):
    async def main():
        batcher = Batcher("m", fake, BatchingOptions(max_batch_size=4, max_queue_delay_s=0), run_clock=fake.clock)
        first = await hold_first_run(batcher, fake)
        waiting = await queue(batcher, *[(value, 1, f"caller{value}") for value in range(10, 15)])
        release(fake)
        return await first, await asyncio.gather(*waiting)
    first, results = asyncio.run(main())
    assert fake.batches == [[1], [10, 11, 12, 13], [14]]
    for value, result in zip(range(10, 15), results):
        assert (result.outputs["logits"] == logits_of(value)).all() and set(result.outputs) == {"logits", "fc1"}
    assert [r.batch_size for r in results] == [4, 4, 4, 4, 1]


def test_a_caller_with_little_queued_overtakes_a_flood(fake):
    """Start-time fair queuing: one 1-image request runs before a flood caller's queued 4-image requests."""
    async def main():
        options = BatchingOptions(max_batch_size=4, max_queue_delay_s=0, max_caller_images=16)
        batcher = Batcher("m", fake, options, run_clock=fake.clock)
        first = await hold_first_run(batcher, fake)
        flood = await queue(batcher, *[(value, 4, "flood") for value in (20, 21, 22, 23)])
        polite = await queue(batcher, (99, 1, "polite"))
        release(fake)
        results = await asyncio.gather(first, *flood, *polite)
        assert all((r.outputs["logits"] == logits_of(v)).all() for r, v in zip(results[1:], (20, 21, 22, 23, 99)))
        assert [r.batch_size for r in results[1:]] == [4, 4, 4, 4, 4]
    asyncio.run(main())
    # the polite image runs next, the runs filled with slices of the flood's requests
    assert fake.batches == [[1], [99, 20, 20, 20], [20, 21, 21, 21], [21, 22, 22, 22], [22, 23, 23, 23], [23]]


def test_a_run_never_exceeds_max_run_images_and_sliced_requests_get_all_their_rows(fake):
    async def main():
        options = BatchingOptions(max_batch_size=8, max_run_images=3, max_queue_delay_s=0)
        batcher = Batcher("m", fake, options, run_clock=fake.clock)
        first = await hold_first_run(batcher, fake)
        big, small = await queue(batcher, (5, 8, "a"), (6, 2, "b"))
        release(fake)
        await first
        return await big, await small
    big, small = asyncio.run(main())
    assert [len(run) for run in fake.batches] == [1, 3, 3, 3, 1]
    assert big.outputs["logits"].shape == (8, 10) and (big.outputs["logits"] == logits_of(5)).all()
    assert small.outputs["logits"].shape == (2, 10) and (small.outputs["logits"] == logits_of(6)).all()


def test_a_full_queue_and_a_full_caller_share_refuse_at_once(fake):
    async def main():
        batcher = Batcher("m", fake, BatchingOptions(max_queue_images=6, max_caller_images=3), run_clock=fake.clock)
        first = await hold_first_run(batcher, fake)
        queued = await queue(batcher, (2, 2, "a"), (3, 2, "b"))
        with pytest.raises(ResourceExhausted, match="one caller's share is 3"):
            await batcher.infer(images(4, 2), ["logits"], caller="a")
        queued += await queue(batcher, (5, 1, "a"))         # within the share and the queue
        with pytest.raises(ResourceExhausted, match="limit is 6"):
            await batcher.infer(images(5, 2), ["logits"], caller="b")
        queued += await queue(batcher, (6, 2, "newcomer"))  # a caller with nothing queued is admitted
        release(fake)
        await asyncio.gather(first, *queued)
        assert requests_queued(batcher) == 0 and not batcher._caller_images and not batcher._caller_tag
    asyncio.run(main())


def test_one_caller_may_use_the_room_nobody_else_wants(fake):
    """The per-caller share applies once the queue is half full, not before (one busy connection, or a proxy)."""
    async def main():
        batcher = Batcher("m", fake, BatchingOptions(max_queue_images=20, max_caller_images=3), run_clock=fake.clock)
        first = await hold_first_run(batcher, fake)
        queued = await queue(batcher, *[(v, 2, "busy") for v in (2, 3, 4, 5)])     # 8 images: under half
        with pytest.raises(ResourceExhausted, match="one caller's share is 3"):
            await batcher.infer(images(6, 4), ["logits"], caller="busy")             # 12 > half of 20
        release(fake)
        await asyncio.gather(first, *queued)
    asyncio.run(main())


def test_expired_and_cancelled_requests_are_dropped_before_compute(fake):
    async def main():
        batcher = Batcher("m", fake, BatchingOptions(max_queue_delay_s=0), run_clock=fake.clock)
        first = await hold_first_run(batcher, fake)
        expired = asyncio.create_task(batcher.infer(images(2), ["logits"], deadline=time.monotonic() + 0.01))
        cancelled, = await queue(batcher, (3, 1, "gone"))
        cancelled.cancel()                     # what grpc.aio does when the client goes away
        await asyncio.sleep(0.02)
        release(fake)
        await first
        with pytest.raises(DeadlineExceeded):
            await expired
        assert cancelled.cancelled()
    asyncio.run(main())
    assert fake.batches == [[1]], "neither reached the runtime"


@pytest.mark.parametrize("failure", [RuntimeError("onnxruntime failed"), KeyError("an output the graph lacks")])
def test_an_exception_fails_exactly_its_batch_and_the_next_request_runs(fake, failure):
    async def main():
        batcher = Batcher("m", fake, BatchingOptions(max_queue_delay_s=0), run_clock=fake.clock)
        fake.failure = failure
        first = await hold_first_run(batcher, fake)
        doomed = await queue(batcher, (2, 1, "a"), (3, 1, "b"))
        release(fake)
        await first
        for task in doomed:
            with pytest.raises(type(failure)):
                await task
        result = await batcher.infer(images(5), ["logits"])
        assert (result.outputs["logits"] == logits_of(5)).all() and requests_queued(batcher) == 0
    asyncio.run(main())


def test_missing_output_in_the_runtime_result_does_not_wedge_the_model(fake):
    class Lacking(FakeRuntime):
        def run(self, images, outputs, may_use_all_cores=False):
            return {}                       # metadata lists an output the graph does not have

    async def main():
        batcher = Batcher("m", Lacking(), BatchingOptions())
        for _ in range(3):
            with pytest.raises(KeyError):
                await asyncio.wait_for(batcher.infer(images(1), ["logits"]), 5)
    asyncio.run(main())


def test_a_batch_waits_for_a_request_being_decoded_but_not_for_absent_company(fake):
    async def main():
        batcher = Batcher("m", fake, BatchingOptions(max_queue_delay_s=0.5), run_clock=fake.clock)
        alone_s = (await batcher.infer(images(1), ["logits"])).queue_s
        with batcher.arriving():                          # a request is being decoded off the loop
            first = asyncio.create_task(batcher.infer(images(2), ["logits"]))
            await asyncio.sleep(0.05)
            second = asyncio.create_task(batcher.infer(images(3), ["logits"]))
            await asyncio.sleep(0)
        await asyncio.gather(first, second)
        return alone_s
    alone_s = asyncio.run(main())
    assert alone_s < 0.25, "a lone request waited for the delay"
    assert fake.batches == [[1], [2, 3]]


async def make_active(batcher: Batcher, *callers: str) -> None:
    """Each caller sends one request at once and gets its answer: the batcher now expects each back."""
    await asyncio.gather(*(batcher.infer(images(9), ["logits"], caller=c) for c in callers))


def test_an_inline_run_waits_for_callers_that_have_been_active(fake):
    """gRPC hands the event loop one new call at a time, so without this wait every inline run had a batch of one."""
    async def main():
        batcher = Batcher("m", fake, BatchingOptions(max_queue_delay_s=0.5), run_clock=fake.clock)
        await make_active(batcher, "a", "b", "c")
        fake.batches.clear()
        tasks = []
        for value, caller in ((4, "a"), (5, "b"), (6, "c")):   # closed-loop clients come back one by one
            tasks.append(asyncio.create_task(batcher.infer(images(value), ["logits"], caller=caller)))
            await asyncio.sleep(0.01)
        return await asyncio.gather(*tasks)
    results = asyncio.run(main())
    assert fake.batches == [[4, 5, 6]]
    assert results[0].queue_s >= 0.015, "the first request did not wait for the others"
    assert results[0].queue_s < 0.25, "the run waited past the last expected caller"


def test_an_inline_run_waits_for_every_call_a_multiplexed_connection_had_in_flight(fake):
    """One gRPC channel, many calls in flight (HTTP/2 streams on one connection): the caller is one, its company
    is not. Counting callers, the second run went at once with one image."""
    async def main():
        batcher = Batcher("m", fake, BatchingOptions(max_queue_delay_s=0.5), run_clock=fake.clock)
        await make_active(batcher, "channel", "channel", "channel")   # three calls in flight, all answered
        fake.batches.clear()
        tasks = []
        for value in (4, 5, 6):                                      # each call comes back with a new request
            tasks.append(asyncio.create_task(batcher.infer(images(value), ["logits"], caller="channel")))
            await asyncio.sleep(0.01)
        return await asyncio.gather(*tasks)
    results = asyncio.run(main())
    assert fake.batches == [[4, 5, 6]]
    assert 0.015 <= results[0].queue_s < 0.25


def test_the_batcher_forgets_callers_that_are_gone(fake):
    """Connections come and go; what the batcher keeps per caller must not grow with every one it has seen
    (before, a model that ran on the compute thread kept each caller's last arrival forever)."""
    async def main():
        batcher = Batcher("m", fake, BatchingOptions(), run_clock=fake.clock)
        fake.delay = 0.002                                   # a compute-thread model
        for i in range(200):
            await batcher.infer(images(1), ["logits"], caller=f"connection-{i}")
        await asyncio.sleep(0.1)                             # twice ACTIVE_CALLER_S
        await batcher.infer(images(1), ["logits"], caller="last")
        return remembered_callers(batcher)
    assert asyncio.run(main()) <= 1


def test_a_caller_that_does_not_come_back_delays_a_run_by_at_most_the_queue_delay(fake, monkeypatch):
    # Callers stay expected for 0.6 s here, not 50 ms: a loaded machine may stall the loop longer than 50 ms
    # between two awaits, and "b" would be forgotten before the run this test watches.
    monkeypatch.setattr(batcher_module, "ACTIVE_CALLER_S", 0.6)

    async def main():
        batcher = Batcher("m", fake, BatchingOptions(max_queue_delay_s=0.1), run_clock=fake.clock)
        await make_active(batcher, "a", "b")
        waited = (await batcher.infer(images(1), ["logits"], caller="a")).queue_s   # "b" never sends again
        await asyncio.sleep(0.7)                                                     # ... and is forgotten
        return waited, (await batcher.infer(images(1), ["logits"], caller="a")).queue_s
    waited, later = asyncio.run(main())
    assert 0.09 <= waited < 0.5, f"waited {waited:.3f} s: the queue delay (0.1 s) bounds the wait, not 0.6 s"
    assert later < 0.05, f"a caller idle for 0.7 s still held a run for {later:.3f} s"


def test_a_run_on_the_compute_thread_does_not_wait_for_company(fake):
    async def main():
        batcher = Batcher("m", fake, BatchingOptions(max_queue_delay_s=0.5), run_clock=fake.clock)
        fake.delay = 0.005                       # runs this long go to the compute thread
        await make_active(batcher, "a", "b")
        return (await batcher.infer(images(1), ["logits"], caller="a")).queue_s
    assert asyncio.run(main()) < 0.25


def test_only_runs_on_the_compute_thread_may_use_all_the_cores(fake):
    """A run worth handing to the compute thread may take the cores of idle workers; an inline one stays small."""
    async def main():
        batcher = Batcher("m", fake, BatchingOptions(), run_clock=fake.clock)
        await batcher.infer(images(1), ["logits"])      # the first run's cost is unknown: the compute thread
        await batcher.infer(images(1), ["logits"])      # a fast model: inline
        fake.delay = 0.05
        await batcher.infer(images(1), ["logits"])      # 50 ms: the estimate passes INLINE_RUN_S, the next is threaded
        await batcher.infer(images(1), ["logits"])
    asyncio.run(main())
    assert fake.all_cores == [True, False, False, True]


def test_a_run_of_about_a_millisecond_runs_on_the_loop(fake):
    """lenet_bn's 64-image runs (about 1 ms) belong on the loop (docs/batching.md). The hand-off does not count
    in the run's time: the first run (its cost unknown) goes to the thread, and a run would otherwise stay
    there because of the thread."""
    async def main():
        batcher = Batcher("m", fake, BatchingOptions(), run_clock=fake.clock)
        fake.delay = 0.0012
        for _ in range(16):
            await batcher.infer(images(1, 64), ["logits"])
    asyncio.run(main())
    assert fake.all_cores[0]                  # the first run's cost is unknown: the compute thread
    # then inline (from the second run, unless a sleep overshot: the estimate is a moving average)
    assert fake.all_cores[-4:] == [False] * 4, fake.all_cores


def test_ranked_requests_get_classes_best_first_with_softmax_probabilities(fake):
    from server.batcher import RANKED_PROBABILITIES, RANKING, rank_classes

    async def main():
        batcher = Batcher("m", fake, BatchingOptions(), run_clock=fake.clock)
        return await asyncio.gather(batcher.infer(images(3, 2), ["logits", RANKING, RANKED_PROBABILITIES]),
                                    batcher.infer(images(4), ["logits"]))
    ranked, plain = asyncio.run(main())
    assert ranked.outputs[RANKING].tolist() == [list(range(9, -1, -1))] * 2     # the fake's logits grow with the class
    best_first = np.exp(logits_of(3)[::-1] - logits_of(3).max())
    np.testing.assert_allclose(ranked.outputs[RANKED_PROBABILITIES], [best_first / best_first.sum()] * 2, rtol=1e-6)
    assert list(plain.outputs) == ["logits"]
    ranking, probabilities = rank_classes(np.array([[1.0, 3.0, 3.0, -2.0]], dtype=np.float32))
    assert ranking.tolist() == [[1, 2, 0, 3]]
    expected = np.exp([3.0, 3.0, 1.0, -2.0]) / np.exp([1.0, 3.0, 3.0, -2.0]).sum()
    np.testing.assert_allclose(probabilities[0], expected, rtol=1e-6)
