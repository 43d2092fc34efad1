"""`--workers N` as an operator meets it: every port (gRPC, HTTP, metrics) works with several workers, a
worker that dies is replaced (and counted in the metrics), and a clean SIGTERM exits 0 even after one died."""
import os
import re
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.http as thttp

from client.cli import raw_image
from client.spawn import SpawnedServer
from cnnserve.proto import classifier_pb2 as pb


def worker_pids(parent: int) -> list[int]:
    """The parent's worker processes (multiprocessing's spawned children, not its resource tracker)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(pid) for pid in children
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def serving_pids(log: str) -> set[int]:
    return {int(pid) for pid in re.findall(r"\[(\d+)\]: SERVING: ", log)}


def wait_for(condition, timeout: float = 60, what: str = "") -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - started


def classify(process: SpawnedServer) -> int:
    request = pb.ClassifyRequest(model="lenet_bn", images=[raw_image(np.zeros((28, 28), np.uint8))])
    return len(process.stub.Classify(request, timeout=10).results)


def http_infer(process: SpawnedServer) -> tuple:
    client = thttp.InferenceServerClient(process.http_target)
    tensor = thttp.InferInput("image", [1, 1, 28, 28], "UINT8")
    tensor.set_data_from_numpy(np.zeros((1, 1, 28, 28), np.uint8))
    return client.infer("lenet_bn", [tensor]).as_numpy("logits").shape


@pytest.mark.slow     # end to end, several seconds: in the full run (docs/development.md)
def test_every_port_works_with_two_workers_and_a_killed_worker_is_replaced(committed_repository, tmp_path):
    process = SpawnedServer(committed_repository, ["--models", "lenet_bn", "--workers", "2"],
                            log_path=tmp_path / "s.log", with_http=True, with_metrics=True)
    try:
        wait_for(lambda: len(serving_pids(process.log())) == 2, what="both workers SERVING")
        assert "Address already in use" not in process.log() and "cannot listen" not in process.log()
        workers = worker_pids(process.process.pid)
        assert sorted(workers) == sorted(serving_pids(process.log()))
        for _ in range(20):                 # new connections spread over both workers' shared ports
            assert classify(process) == 1 and http_infer(process) == (1, 10)
        metrics_ports = [process.metrics_port, process.metrics_port + 1]
        for port in metrics_ports:
            from urllib.request import urlopen
            text = urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            assert 'cnnserve_worker_restarts_total{worker="0"} 0.0' in text

        victim = workers[0]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        restart_s = wait_for(lambda: len(serving_pids(process.log()) - set(workers)) == 1, what="a replacement")
        print(f"worker replaced and SERVING {time.monotonic() - killed_at:.2f} s after SIGKILL")
        log = process.log()
        assert re.search(rf"worker-\d \(pid {victim}\) killed by SIGKILL after \d+ s; starting a replacement", log), log
        assert restart_s < 60
        assert len(worker_pids(process.process.pid)) == 2
        failures = 0
        for _ in range(20):
            try:
                assert classify(process) == 1 and http_infer(process) == (1, 10)
            except grpc.RpcError:
                failures += 1
        assert failures == 0
        from urllib.request import urlopen
        text = "".join(urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode() for port in metrics_ports)
        assert re.search(r'cnnserve_worker_restarts_total\{worker="\d"\} 1\.0', text), text
    finally:
        code = process.stop()
    assert code == 0, process.log()
    assert "workers exited with an error" not in process.log()


def test_a_worker_that_fails_at_start_up_stops_the_server_with_its_reason(committed_repository, tmp_path):
    """A start-up error (here: the HTTP port is taken) is not retried forever: the parent exits with it."""
    import socket
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        process = SpawnedServer(committed_repository, ["--models", "lenet_bn", "--workers", "2", "--http-port", str(port)],
                                log_path=tmp_path / "s.log", wait=False)
        try:
            code = process.process.wait(60)
        finally:
            process.stop()
    assert code != 0
    assert "cannot listen" in process.log() and "failed at start-up" in process.log()
