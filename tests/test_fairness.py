"""No client can starve the others: idle streams hold no threads, and a flood of large requests
does not push a polite caller's latency beyond a few times its unloaded value."""
import asyncio
import importlib.util
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2 as hpb
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as rpb
from grpc_reflection.v1alpha import reflection_pb2_grpc

from client.spawn import ROOT, SpawnedServer
from cnnserve.proto import classifier_pb2 as pb

IDLE_STREAMS = 200      # of each kind: reflection and health Watch (the old server had 64 threads in all)


def classify_latencies(stub, count: int) -> list[float]:
    image = pb.Image(tensor=pb.Tensor(shape=[28, 28], dtype="uint8", data=bytes(784)))
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        stub.Classify(pb.ClassifyRequest(model="lenet_bn", images=[image]), timeout=5)
        latencies.append(time.perf_counter() - start)
    return latencies


async def open_idle_streams(target: str, count: int, opened: asyncio.Event, release: asyncio.Event) -> None:
    """`count` reflection streams that sent one request and `count` health Watches, all answered once, then idle."""
    async with grpc.aio.insecure_channel(target) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        calls = []
        for _ in range(count):
            call = reflection.ServerReflectionInfo()
            await call.write(rpb.ServerReflectionRequest(list_services=""))
            await call.read()
            watch = health.Watch(hpb.HealthCheckRequest(service="lenet_bn"))
            assert (await watch.read()).status == hpb.HealthCheckResponse.SERVING
            calls += [call, watch]
        opened.set()
        await release.wait()
        for call in calls:
            call.cancel()


def test_hundreds_of_idle_streams_do_not_delay_classify(serving_repository, tmp_path):
    server = SpawnedServer(serving_repository, ["--models", "lenet_bn", "--max-concurrent-rpcs", "1000"],
                           log_path=tmp_path / "server.log")
    try:
        classify_latencies(server.stub, 10)                            # warm
        unloaded = np.median(classify_latencies(server.stub, 30))

        async def main():
            opened, release = asyncio.Event(), asyncio.Event()
            streams = asyncio.create_task(open_idle_streams(server.target, IDLE_STREAMS, opened, release))
            await asyncio.wait_for(opened.wait(), 60)
            try:        # the blocking client in a thread, so the streams' loop keeps running
                return await asyncio.to_thread(classify_latencies, server.stub, 30)
            finally:
                release.set()
                await streams
        loaded = np.median(asyncio.run(main()))
        print(f"Classify p50 {unloaded * 1e3:.2f} ms alone, {loaded * 1e3:.2f} ms beside "
              f"{2 * IDLE_STREAMS} idle streams")
        assert loaded < 3 * unloaded + 0.005
    finally:
        assert server.stop() == 0


def test_a_costly_image_being_decoded_does_not_stall_other_requests(serving_repository, tmp_path):
    """The largest PNGs the limits allow take seconds to decode; that happens off the event loop, so small requests
    keep being answered while it runs. Asserted as an order, not a latency (which a busy machine stretches): were the
    decode on the loop, no small request would finish until a decode had."""
    import threading

    from test_decoder import bomb_png
    server = SpawnedServer(serving_repository, ["--models", "lenet_bn"], log_path=tmp_path / "server.log")
    try:
        classify_latencies(server.stub, 10)
        unloaded = np.median(classify_latencies(server.stub, 20))
        costly = pb.ClassifyRequest(model="lenet_bn", images=[pb.Image(encoded=bomb_png(4096))] * 2)
        decoding = [threading.Thread(target=server.stub.Classify, args=(costly,), kwargs={"timeout": 120})
                    for _ in range(2)]
        for thread in decoding:
            thread.start()
        time.sleep(0.2)                                   # both are decoding now (about a second each)
        answered_while_decoding, loaded = 0, []
        while all(thread.is_alive() for thread in decoding) and answered_while_decoding < 20:
            loaded += classify_latencies(server.stub, 1)
            answered_while_decoding += all(thread.is_alive() for thread in decoding)
        for thread in decoding:
            thread.join(120)
        print(f"Classify p50 {unloaded * 1e3:.2f} ms alone, {np.median(loaded) * 1e3:.2f} ms beside two decodes "
              f"of 2 x 4096x4096 PNGs; {answered_while_decoding} answered before either decode finished")
        assert answered_while_decoding >= 3, "small requests waited for the costly decode"
    finally:
        assert server.stop() == 0


def load_fairness_bench():
    spec = importlib.util.spec_from_file_location("fairness", ROOT / "bench" / "fairness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_flood_of_large_requests_leaves_a_polite_caller_its_latency(serving_repository, tmp_path):
    """bench/fairness.py, scaled down: 8 connections sending googlenet requests of 16 images back to back."""
    server = SpawnedServer(serving_repository, ["--models", "googlenet", "--max-run-images", "2"],
                           log_path=tmp_path / "server.log")
    try:
        result = load_fairness_bench().run(server.target, "googlenet", callers=8, images=16, seconds=8)
    finally:
        server.stop()
    print(result)
    # Without fair queuing the polite request waits behind every queued flood request (seconds).
    # The p99 target (3x) is the benchmark's to check on a quiet machine; here the median must show
    # that the polite caller overtakes the flood and waits at most about one run.
    assert result["polite_refused"] == 0 and result["flood"].get("OK", 0) > 0
    assert result["loaded_p50_ms"] <= 3 * result["unloaded_p99_ms"] + 10, result
