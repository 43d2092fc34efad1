"""grpc.health.v1 against hostile watchers: List works, Watch of unknown names costs nothing that
lasts, and many concurrent watchers neither leak nor deadlock the server."""
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2 as hpb
from grpc_health.v1 import health_pb2_grpc

from client.spawn import SpawnedServer


@pytest.fixture(scope="module")
def server(committed_repository, tmp_path_factory):
    process = SpawnedServer(committed_repository, ["--models", "lenet_bn"],
                            log_path=tmp_path_factory.mktemp("logs") / "server.log")
    yield process
    assert process.stop() == 0


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_list_answers_every_service(server):
    statuses = health_pb2_grpc.HealthStub(server.channel).List(hpb.HealthListRequest(), timeout=5).statuses
    assert {"", "cnnserve.v1.Classifier", "inference.GRPCInferenceService", "lenet_bn"} <= set(statuses)
    assert statuses["lenet_bn"].status == hpb.HealthCheckResponse.SERVING


def test_watch_of_new_names_keeps_nothing_and_never_deadlocks(server):
    stub = health_pb2_grpc.HealthStub(server.channel)
    watch = stub.Watch(hpb.HealthCheckRequest(service="lenet_bn"), timeout=10)
    assert next(watch).status == hpb.HealthCheckResponse.SERVING
    watch.cancel()

    def watch_once(index: int) -> None:
        stream = stub.Watch(hpb.HealthCheckRequest(service=f"{index:06d}" + "x" * 1_000_000), timeout=10)
        assert next(stream).status == hpb.HealthCheckResponse.SERVICE_UNKNOWN
        stream.cancel()

    def round_of_300(first: int) -> None:
        for start in range(first, first + 300, 50):             # 50 at a time
            threads = [threading.Thread(target=watch_once, args=(i,)) for i in range(start, start + 50)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
                assert not thread.is_alive(), "a Watch call hung"

    # The first round raises the allocator's high-water mark (50 names of 1 MB in flight at once);
    # what must not happen is growth with every round, as when each name was kept (~300 MB a round). The bar
    # is a third of that: how much the allocator keeps of a round depends on how many calls overlap (33 MB seen).
    round_of_300(0)
    before = rss_mb(server.process.pid)
    round_of_300(300)
    grown = rss_mb(server.process.pid) - before
    assert grown < 100, f"RSS grew {grown:.0f} MB over a second 300 watches of 1 MB names"
    assert stub.Check(hpb.HealthCheckRequest(service=""), timeout=5).status == hpb.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as error:
        stub.Check(hpb.HealthCheckRequest(service="x" * 1_000_000), timeout=5)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND and len(error.value.details()) < 200
