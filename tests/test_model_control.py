"""Model control against real servers and real clients (issue 30): a new version rolled out under 16 callers
without a failed request, by repository polling (while `python -m export.onnx` writes it) and by tritonclient's
`load_model`; a broken version refused while the one before serves on, and its fix picked up; version policies;
the repository extension's refusals (mode, token, names that are paths); and, slow, the memory that 50
load/unload cycles leave behind.

Versions are written as export writes them: built under a hidden name in the model's directory, then renamed."""
import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from google.protobuf import text_format
from grpc_health.v1 import health_pb2 as hpb
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc.service_pb2_grpc import GRPCInferenceServiceStub
from tritonclient.utils import InferenceServerException

from client.callers import PROTOCOLS, Callers
from client.spawn import ROOT, SpawnedServer
from cnnserve.proto import classifier_pb2 as pb
from cnnserve.proto import classifier_pb2_grpc as pb_grpc
from server.control_log import ControlLog

POLL_S = 0.5
TOKEN = "model-control-token-0123456789"
PIXELS = pb.Image(tensor=pb.Tensor(shape=[28, 28], dtype="uint8", data=bytes(784)))


@pytest.fixture
def repository(trained_repository, tmp_path) -> Path:
    """The shipped lenet_bn, version 1, in a repository of this test's own."""
    shutil.copytree(trained_repository, tmp_path / "repository")
    return tmp_path / "repository"


@contextlib.contextmanager
def serving(repository: Path, tmp_path: Path, *args: str, **kwargs):
    server = SpawnedServer(repository, list(args), log_path=tmp_path / "server.log", **kwargs)
    try:
        yield server
    finally:
        assert server.stop() == 0, server.log()


def add_version(model_dir: Path, version: int, source: int = 1, damage: bool = False) -> float:
    """Write `version` as a copy of `source`, as export writes a version: whole under a hidden name, then renamed
    into place; returns when it appeared (time.monotonic()). `damage`: its model file no longer matches the
    sha256 its metadata records."""
    staging = model_dir / f".staging-{version}"
    shutil.copytree(model_dir / str(source), staging)
    if damage:
        with open(staging / "model.onnx", "ab") as model_file:
            model_file.write(b"damaged")
    staging.rename(model_dir / str(version))
    return time.monotonic()


def set_version_policy(model_dir: Path, policy: str) -> None:
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())
    config.version_policy.CopyFrom(text_format.Parse(policy, mc.ModelVersionPolicy()))
    partial = model_dir / ".config.pbtxt.partial"
    partial.write_text(text_format.MessageToString(config))
    os.replace(partial, model_dir / "config.pbtxt")


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)
    return value


def classify(server: SpawnedServer, version: int = 0, metadata=()) -> pb.ClassifyResponse:
    return server.stub.Classify(pb.ClassifyRequest(model="lenet_bn", version=version, images=[PIXELS]), timeout=10,
                                metadata=metadata)


def index_rows(client) -> dict[tuple[str, str], tuple[str, str]]:
    """(name, version) -> (state, reason), from tritonclient.grpc's get_model_repository_index."""
    return {(m.name, m.version): (m.state, m.reason) for m in client.get_model_repository_index().models}


def health(server: SpawnedServer, service: str) -> int:
    return server.health.Check(hpb.HealthCheckRequest(service=service), timeout=5).status


@pytest.mark.slow     # end to end, several seconds: in the full run (docs/development.md)
def test_polling_rolls_out_an_export_under_load_without_a_failed_request(repository, tmp_path, data_dir):
    """16 callers (cnnserve.v1 and KServe v2 gRPC) while `python -m export.onnx` writes version 2 into the served
    repository: none fails, version 2 answers within two poll intervals of its directory appearing, and every
    request sent after its first answer gets version 2."""
    version_dir = repository / "lenet_bn" / "2"
    with serving(repository, tmp_path, "--model-control-mode", "poll", "--repository-poll-secs", str(POLL_S)) as server:
        with Callers(server.target, "lenet_bn") as callers:
            export = subprocess.Popen([sys.executable, "-m", "export.onnx", "--arch", "lenet_bn", "--weights",
                                       "fashion-mnist", "--out", str(repository), "--data-dir", str(data_dir)],
                                      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            while not version_dir.is_dir():
                assert export.poll() is None, export.communicate()[0]
                time.sleep(0.005)
            appeared = time.monotonic()
            output = export.communicate(timeout=600)[0]
            assert export.returncode == 0, output
            first = wait_for(lambda: callers.first(2), 30, "an answer from version 2")
            time.sleep(2 * POLL_S)
        answers = callers.answers
        assert classify(server).version == 2
    assert not callers.failures(), callers.failures()[:5]
    assert first.answered - appeared < 2 * POLL_S, f"version 2 first answered {first.answered - appeared:.2f} s " \
                                                    f"after its directory appeared"
    assert not [a for a in answers if a.sent > first.answered and a.version != 2]
    assert {a.protocol for a in answers if a.version == 1} == {a.protocol for a in answers if a.version == 2} \
        == set(PROTOCOLS)
    assert "model lenet_bn v1 drained and released" in server.log()


@pytest.mark.slow     # end to end, several seconds: in the full run (docs/development.md)
def test_load_model_rolls_out_under_load_and_unload_drains(repository, tmp_path):
    """Explicit mode: nothing changes until tritonclient's load_model; then every request sent after the call
    returned gets version 2, none failing. Over HTTP, unload_model and load_model as tritonclient.http calls them."""
    with serving(repository, tmp_path, "--model-control-mode", "explicit", "--load-model", "lenet_bn",
                 with_http=True) as server:
        client = tgrpc.InferenceServerClient(server.target)
        with Callers(server.target, "lenet_bn") as callers:
            add_version(repository / "lenet_bn", 2)
            time.sleep(3 * POLL_S)
            assert callers.first(2) is None, "explicit mode does not poll"
            client.load_model("lenet_bn")
            loaded = time.monotonic()
            time.sleep(1.0)
        assert not callers.failures(), callers.failures()[:5]
        assert callers.first(1) and not [a for a in callers.answers if a.sent > loaded and a.version != 2]
        assert index_rows(client) == {("lenet_bn", "2"): ("READY", "")}

        http = thttp.InferenceServerClient(server.http_target)
        http.unload_model("lenet_bn")
        assert http.get_model_repository_index() == [{"name": "lenet_bn", "version": "", "state": "UNAVAILABLE",
                                                      "reason": "unloaded"}]
        assert not http.is_model_ready("lenet_bn") and health(server, "lenet_bn") == hpb.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as refused:
            classify(server)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "unloaded" in refused.value.details()
        http.load_model("lenet_bn")
        assert classify(server).version == 2 and health(server, "lenet_bn") == hpb.HealthCheckResponse.SERVING
        assert http.get_model_repository_index() == [
            {"name": "lenet_bn", "version": "2", "state": "READY", "reason": ""}]
    assert server.log().count("model lenet_bn v2 drained and released") == 1


def test_a_broken_version_is_refused_while_the_one_before_serves_and_its_fix_is_picked_up(repository, tmp_path):
    model_dir = repository / "lenet_bn"
    add_version(model_dir, 2)
    with serving(repository, tmp_path, "--model-control-mode", "poll", "--repository-poll-secs", str(POLL_S)) as server:
        client = tgrpc.InferenceServerClient(server.target)
        assert classify(server).version == 2, "latest { num_versions: 1 }: the newest"
        add_version(model_dir, 3, source=2, damage=True)
        rows = wait_for(lambda: (rows := index_rows(client)).get(("lenet_bn", "3"), ("",))[0] == "UNAVAILABLE"
                        and rows, 10, "version 3 refused in the index")
        assert "sha256" in rows[("lenet_bn", "3")][1] and rows[("lenet_bn", "2")] == ("READY", "")
        assert classify(server).version == 2
        info = server.stub.GetModel(pb.GetModelRequest(name="lenet_bn"), timeout=5)
        assert info.ready and list(info.versions) == [2] and "sha256" in info.reason and "serving version 2" in info.reason
        assert health(server, "lenet_bn") == hpb.HealthCheckResponse.SERVING
        time.sleep(3 * POLL_S)
        assert server.log().count("model lenet_bn v3 is NOT serving") == 1, "the same broken files are not retried"

        partial = model_dir / "3" / ".model.onnx.partial"       # the fix, as an atomic replace of the file
        shutil.copy(model_dir / "2" / "model.onnx", partial)
        os.replace(partial, model_dir / "3" / "model.onnx")
        wait_for(lambda: classify(server).version == 3, 10, "the fixed version 3 served")
        wait_for(lambda: index_rows(client) == {("lenet_bn", "3"): ("READY", "")}, 10, "version 2 released")
        info = server.stub.GetModel(pb.GetModelRequest(name="lenet_bn"), timeout=5)
        assert list(info.versions) == [3] and info.reason == ""
    assert "sha256" in server.log() and "model lenet_bn v2 drained and released" in server.log()


def test_version_policies_serve_what_they_name_and_a_version_not_served_is_not_found(repository, tmp_path):
    model_dir = repository / "lenet_bn"
    for version in (2, 3):
        add_version(model_dir, version)
    set_version_policy(model_dir, "latest { num_versions: 2 }")
    with serving(repository, tmp_path, "--model-control-mode", "poll", "--repository-poll-secs", str(POLL_S)) as server:
        client = tgrpc.InferenceServerClient(server.target)
        info = server.stub.GetModel(pb.GetModelRequest(name="lenet_bn"), timeout=5)
        assert list(info.versions) == [2, 3] and info.version == 3
        assert classify(server).version == 3 and classify(server, version=2).version == 2
        with pytest.raises(grpc.RpcError) as missing:
            classify(server, version=1)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert "it serves versions 2, 3" in missing.value.details()
        assert client.get_model_metadata("lenet_bn").versions == ["2", "3"]
        assert not client.is_model_ready("lenet_bn", "1") and client.is_model_ready("lenet_bn", "2")
        image = tgrpc.InferInput("image", [1, 1, 28, 28], "UINT8")
        image.set_data_from_numpy(np.zeros((1, 1, 28, 28), dtype=np.uint8))
        assert client.infer("lenet_bn", [image], model_version="2").get_response().model_version == "2"
        stats = {s.version: (s.inference_stats.success.count, s.inference_stats.fail.count)
                 for s in client.get_inference_statistics("lenet_bn").model_stats}
        # each version counts its own requests; the one for version 1, not served, counts for the default
        assert stats == {"2": (2, 0), "3": (1, 1)}

        set_version_policy(model_dir, "specific { versions: [1, 3] }")
        wait_for(lambda: list(server.stub.GetModel(pb.GetModelRequest(name="lenet_bn"), timeout=5).versions) == [1, 3],
                 10, "specific { versions: [1, 3] }")
        with pytest.raises(InferenceServerException) as missing:
            client.infer("lenet_bn", [image], model_version="2")
        assert missing.value.status() == "StatusCode.NOT_FOUND" and "versions 1, 3" in missing.value.message()
        assert classify(server, version=1).version == 1

        set_version_policy(model_dir, "all { }")
        wait_for(lambda: list(server.stub.GetModel(pb.GetModelRequest(name="lenet_bn"), timeout=5).versions)
                 == [1, 2, 3], 10, "all { }")
        index = GRPCInferenceServiceStub(server.channel).RepositoryIndex(kpb.RepositoryIndexRequest(ready=True),
                                                                         timeout=5)
        assert [(m.version, m.state) for m in index.models] == [("1", "READY"), ("2", "READY"), ("3", "READY")]


@pytest.mark.parametrize("mode", ["none", "poll"])
def test_load_and_unload_are_refused_outside_explicit_mode(repository, tmp_path, mode):
    with serving(repository, tmp_path, "--model-control-mode", mode, with_http=True) as server:
        client = tgrpc.InferenceServerClient(server.target)
        for call in (client.load_model, client.unload_model):
            with pytest.raises(InferenceServerException) as refused:
                call("lenet_bn")
            assert refused.value.status() == "StatusCode.FAILED_PRECONDITION"
            assert f"--model-control-mode {mode}" in refused.value.message()
            assert "--model-control-mode explicit" in refused.value.message()
        http = thttp.InferenceServerClient(server.http_target)
        with pytest.raises(InferenceServerException) as refused:
            http.unload_model("lenet_bn")
        assert refused.value.status() == "400" and "explicit" in refused.value.message()
        assert classify(server).version == 1 and index_rows(client) == {("lenet_bn", "1"): ("READY", "")}


def http_post(server: SpawnedServer, path: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://{server.http_target}{path}", data=b"{}", method="POST",
                                     headers={"authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_load_and_unload_need_the_token_and_name_a_model_of_the_repository(repository, tmp_path):
    (tmp_path / "token").write_text(TOKEN + "\n")
    with serving(repository, tmp_path, "--model-control-mode", "explicit", "--load-model", "lenet_bn",
                 "--auth-token-file", str(tmp_path / "token"), with_http=True) as server:
        client = tgrpc.InferenceServerClient(server.target)
        headers = {"authorization": f"Bearer {TOKEN}"}
        for call in (client.load_model, client.unload_model):
            with pytest.raises(InferenceServerException) as refused:
                call("lenet_bn")
            assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        assert http_post(server, "/v2/repository/models/lenet_bn/unload")[0] == 401

        for name in ("..", "../lenet_bn", "/etc", "lenet_bn/1", "a\0b", ".staging-2", "x" * 300):
            with pytest.raises(InferenceServerException) as refused:
                client.load_model(name, headers=headers)
            assert refused.value.status() == "StatusCode.INVALID_ARGUMENT", name
            assert "not a model of the repository" in refused.value.message() and len(refused.value.message()) < 400
        for path in ("%2E%2E", "..%2Flenet_bn", "%2Fetc%2Fpasswd", "a%00b", "lenet_bn/1"):
            for call in ("load", "unload"):
                status, body = http_post(server, f"/v2/repository/models/{path}/{call}", TOKEN)
                assert status == 400 and "not a model of the repository" in body, (path, call, status, body)
        with pytest.raises(InferenceServerException) as refused:
            client.load_model("nosuch", headers=headers)
        assert refused.value.status() == "StatusCode.NOT_FOUND" and "lenet_bn" in refused.value.message()
        with pytest.raises(InferenceServerException) as refused:
            client.load_model("lenet_bn", headers=headers, config='{"max_batch_size": 8}')
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT" and "overrides" in refused.value.message()

        client.unload_model("lenet_bn", headers=headers)
        with pytest.raises(InferenceServerException) as refused:
            client.get_model_repository_index()
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        rows = {(m.name, m.version): (m.state, m.reason)
                for m in client.get_model_repository_index(headers=headers).models}
        assert rows == {("lenet_bn", ""): ("UNAVAILABLE", "unloaded")}
        client.load_model("lenet_bn", headers=headers)
        assert classify(server, metadata=tuple(headers.items())).version == 1


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_load_unload_cycles_give_the_memory_back(serving_repository, tmp_path):
    """50 load/unload cycles of googlenet (each answering a request between) leave the server's RSS within 30 MB of
    where it was after one such cycle: released versions take their ONNX Runtime sessions and arenas along."""
    repository = tmp_path / "repository"
    shutil.copytree(serving_repository / "googlenet", repository / "googlenet")
    with serving(repository, tmp_path, "--model-control-mode", "explicit", "--load-model", "googlenet",
                 "--warmup-runs", "1") as server:
        client = tgrpc.InferenceServerClient(server.target)
        request = pb.ClassifyRequest(model="googlenet", images=[PIXELS])

        def cycle() -> None:
            client.unload_model("googlenet")
            client.load_model("googlenet")
            assert server.stub.Classify(request, timeout=60).version == 1

        cycle()
        before = rss_mb(server.process.pid)
        for _ in range(50):
            cycle()
        grown = rss_mb(server.process.pid) - before
    assert grown < 30, f"RSS grew {grown:.0f} MB over 50 load/unload cycles of googlenet"
    assert server.log().count("model googlenet v1 drained and released") == 51


# --workers 2: every connection is a worker picked by SO_REUSEPORT, so each check opens many connections.
CONNECTIONS = 24


def announced_pids(log: str) -> set[int]:
    """The workers that finished starting (SERVING or, with nothing loaded, NOT_SERVING)."""
    return {int(pid) for pid in re.findall(r"\[(\d+)\]: (?:NOT_)?SERVING: ", log)}


def on_new_connections(server: SpawnedServer, version: int = 0) -> list:
    """Classify once on each of CONNECTIONS new connections (a subchannel pool of its own: no connection shared):
    the version that answered, or the refusal's status code."""
    outcomes = []
    for _ in range(CONNECTIONS):
        with grpc.insecure_channel(server.target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            try:
                outcomes.append(pb_grpc.ClassifierStub(channel).Classify(
                    pb.ClassifyRequest(model="lenet_bn", version=version, images=[PIXELS]), timeout=10).version)
            except grpc.RpcError as error:
                outcomes.append(error.code())
    return outcomes


@pytest.mark.slow     # end to end, several seconds: in the full run (docs/development.md)
def test_with_two_workers_load_and_unload_reach_every_worker_and_a_failed_load_says_where(repository, tmp_path):
    """Explicit mode, --workers 2: an unload through any worker (tritonclient gRPC and HTTP, each call a new
    connection) leaves no connection answered; a load brings every connection back; a replaced worker follows what
    the others serve; a broken version's load fails naming the workers and why, and version 1 serves on."""
    with serving(repository, tmp_path, "--model-control-mode", "explicit", "--load-model", "lenet_bn", "--workers",
                 "2", with_http=True) as server:
        wait_for(lambda: len(announced_pids(server.log())) == 2, 60, "both workers started")
        assert set(on_new_connections(server)) == {1}
        for round_ in range(3):
            unload, load = ((tgrpc.InferenceServerClient(server.target).unload_model,
                             thttp.InferenceServerClient(server.http_target).load_model) if round_ % 2 == 0 else
                            (thttp.InferenceServerClient(server.http_target).unload_model,
                             tgrpc.InferenceServerClient(server.target).load_model))
            unload("lenet_bn")
            assert set(on_new_connections(server)) == {grpc.StatusCode.UNAVAILABLE}, "a worker still serves"
            load("lenet_bn")
            assert set(on_new_connections(server)) == {1}, "a worker does not serve"
        log = server.log()
        assert len(set(re.findall(r"\[(\d+)\]: RepositoryModelUnload: model lenet_bn unloaded", log))) == 2

        tgrpc.InferenceServerClient(server.target).unload_model("lenet_bn")
        pids = announced_pids(server.log())
        os.kill(min(pids), signal.SIGKILL)
        wait_for(lambda: len(announced_pids(server.log()) - pids) == 1, 60, "a replacement worker")
        assert set(on_new_connections(server)) == {grpc.StatusCode.UNAVAILABLE}, "the replacement serves lenet_bn"
        tgrpc.InferenceServerClient(server.target).load_model("lenet_bn")
        assert set(on_new_connections(server)) == {1}

        add_version(repository / "lenet_bn", 2, damage=True)
        with pytest.raises(InferenceServerException) as failed:
            tgrpc.InferenceServerClient(server.target).load_model("lenet_bn")
        message = failed.value.message()
        assert failed.value.status() == "StatusCode.INVALID_ARGUMENT", message
        assert "failed on 2 of 2 workers" in message and "worker 0:" in message and "worker 1:" in message, message
        assert "sha256" in message
        assert set(on_new_connections(server)) == {1}, "version 1 serves on in every worker"


@pytest.mark.slow     # end to end, several seconds: in the full run (docs/development.md)
def test_with_two_workers_polling_serves_a_new_version_on_every_worker_within_two_poll_intervals(repository,
                                                                                                  tmp_path):
    with serving(repository, tmp_path, "--model-control-mode", "poll", "--repository-poll-secs", str(POLL_S),
                 "--workers", "2") as server:
        wait_for(lambda: len(announced_pids(server.log())) == 2, 60, "both workers started")
        assert set(on_new_connections(server)) == {1}
        appeared = add_version(repository / "lenet_bn", 2)
        wait_for(lambda: set(on_new_connections(server)) == {2}, 30, "every worker serving version 2")
        converged = time.monotonic() - appeared
        assert set(on_new_connections(server)) == {2}
        log = server.log()
    assert len(set(re.findall(r"\[(\d+)\]: .*model lenet_bn v1 drained and released", log))) == 2
    # one round of CONNECTIONS checks may start just before the last worker swapped: allow for it
    assert converged < 2 * POLL_S + 1.0, f"every worker served version 2 {converged:.2f} s after it appeared"


def test_the_command_log_numbers_commands_once_each_and_waits_a_bounded_time_for_every_worker(tmp_path):
    """The log's own guarantees, without a server: concurrent appends take distinct sequence numbers; a wait ends
    with each worker's outcome, None for a worker that did not acknowledge in time."""
    worker0, worker1 = (ControlLog(tmp_path / "model-control", index, 2) for index in (0, 1))
    with ThreadPoolExecutor(8) as pool:
        sequences = list(pool.map(lambda i: (worker0, worker1)[i % 2].append("load", f"m{i}"), range(40)))
    assert sorted(sequences) == list(range(1, 41))
    assert [c.name for c in worker1.commands()] == [f"m{sequences.index(n)}" for n in range(1, 41)]
    worker0.acknowledge(40, "")
    worker1.acknowledge(39, "")
    assert asyncio.run(worker0.wait(40, timeout=0.3)) == {0: "", 1: None}
    worker1.acknowledge(40, "load failed: why")
    assert asyncio.run(worker0.wait(40)) == {0: "", 1: "load failed: why"}
    last_word, last = worker1.last_word()
    assert last == 40 and len(last_word) == 40
