"""Triton's perf_analyzer, the load generator people point at KServe v2 servers, against a real server: every
protocol and mode runs to exit 0 and reads the server's statistics (its "Server:" section, which needs
compute_input/infer/output counts that agree). Its `--shared-memory system` needs the CUDA runtime library even
for system shared memory and aborts here before it calls the server, so cnnserve's refusal of shared memory is
checked with tritonclient (tests/test_kserve.py). Slow: the first run sets up perf_analyzer's Debian 13 chroot
(`../shared/perf_analyzer/setup.sh`: it needs a newer glibc than this machine's)."""
import subprocess

import pytest

from client.spawn import ROOT, SpawnedServer

pytestmark = pytest.mark.slow
SETUP = ROOT.parent / "shared" / "perf_analyzer" / "setup.sh"
# Windows of 20 requests (a time window on a busy machine may hold one, which perf_analyzer cannot use) that need
# not agree with each other (the machine is shared): this checks that it runs and reads, not speed.
WINDOWS = ["--measurement-mode", "count_windows", "--measurement-request-count", "20", "--stability-percentage", "999",
           "--max-trials", "5"]


@pytest.fixture(scope="module")
def perf_analyzer() -> str:
    assert SETUP.is_file(), f"{SETUP} is missing: the shared recipe for perf_analyzer"
    setup = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=1200)
    assert setup.returncode == 0, setup.stderr[-3000:]
    return setup.stdout.split()[-1]      # the wrapper that runs it in the chroot


@pytest.fixture(scope="module")
def server(committed_repository, tmp_path_factory):
    process = SpawnedServer(committed_repository, ["--models", "lenet_bn"], with_http=True,
                            log_path=tmp_path_factory.mktemp("perf_analyzer") / "server.log")
    yield process
    assert process.stop() == 0, process.log()


def perf(wrapper: str, server, protocol: str, *args: str, model: str = "lenet_bn") -> subprocess.CompletedProcess:
    url = server.target if protocol == "grpc" else server.http_target
    return subprocess.run([wrapper, "-m", model, "-i", protocol, "-u", url, *WINDOWS, *args],
                          capture_output=True, text=True, timeout=300)


# 64-image requests at up to 4 callers: perf_analyzer sends all its gRPC contexts over one connection, which the
# server counts as one caller, and one caller may queue 2 full batches while the model's queue is over half full
# (docs/batching.md): it refuses what it would not hold rather than queue it, so 16 such callers would be refused.
@pytest.mark.parametrize("batch,concurrency", [(1, "1:64:63"), (64, "1:4:3")])
@pytest.mark.parametrize("protocol,mode", [("grpc", "--sync"), ("grpc", "--async"), ("grpc", "--streaming"),
                                           ("http", "--sync"), ("http", "--async")])
def test_perf_analyzer_runs_clean_and_reads_the_server_side_times(perf_analyzer, server, protocol, mode, batch,
                                                                   concurrency):
    result = perf(perf_analyzer, server, protocol, mode, "-b", str(batch), "--concurrency-range", concurrency)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    report = result.stdout
    assert report.count("Server: ") == 2, report[-3000:]          # one per concurrency level
    for stage in ("queue", "compute input", "compute infer", "compute output"):
        assert stage in report, report[-3000:]
    assert "Inferences/Second vs. Client" in report


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_perf_analyzer_measures_the_classify_path_through_the_logits_view(perf_analyzer, server, protocol):
    """perf_analyzer asks for every output the metadata lists: lenet_bn.logits lists the logits alone, and its
    statistics count apart from lenet_bn's."""
    import tritonclient.grpc as tgrpc
    result = perf(perf_analyzer, server, protocol, "-b", "64", "--concurrency-range", "1", model="lenet_bn.logits")
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert result.stdout.count("Server: ") == 1, result.stdout[-3000:]
    stats = tgrpc.InferenceServerClient(server.target).get_inference_statistics("lenet_bn.logits").model_stats[0]
    assert stats.name == "lenet_bn.logits" and stats.inference_count >= 64 * 20
