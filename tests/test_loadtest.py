"""The load generator against real servers: counts, percentiles, outputs, and open-loop honesty."""
import csv
import json
import subprocess
import sys

import pytest

from client.loadtest import Level, Workload, run_level
from client.spawn import ROOT, SpawnedServer


@pytest.mark.slow
def test_closed_loop_cli_with_spawned_server(serving_repository, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "server.loadtest", "--spawn-server", str(serving_repository), "--model", "lenet_bn",
         "--concurrency", "1,4", "--duration", "1.5", "--warmup", "0.5", "--processes", "2",
         "--json", str(tmp_path / "out.json"), "--csv", str(tmp_path / "out.csv")],
        capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads((tmp_path / "out.json").read_text())
    assert [r["concurrency"] for r in rows] == [1, 4]
    for r in rows:
        assert r["sent"] == r["ok"] + sum(r["failed"].values()) and r["ok"] > 10 and not r["failed"]
        assert r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["p999_ms"] <= r["max_ms"]
        assert r["elapsed_s"] >= r["duration_s"] and abs(r["requests_per_s"] - r["ok"] / r["elapsed_s"]) < 1e-9
    assert len(list(csv.DictReader(open(tmp_path / "out.csv")))) == 2
    assert "p99.9" in result.stdout and "c=4" in result.stdout
    assert "concurrency 4" in result.stderr, "a live progress line per level"


@pytest.mark.slow
def test_open_loop_above_capacity_shows_rising_latency(serving_repository, tmp_path):
    """Without batching and with one thread the server's capacity is low; an open loop at three
    times that rate must report latency growing through the run instead of hiding the queue."""
    server = SpawnedServer(serving_repository, ["--models", "resnet18", "--max-batch-size", "1", "--threads", "1",
                                                "--max-queue-images", "100000"], log_path=tmp_path / "server.log")
    try:
        workload = Workload(target=server.target, model="resnet18", warmup_s=0.5, duration_s=2.0, processes=1,
                            timeout_s=60)
        closed = run_level(workload, Level(concurrency=1), live=False)
        capacity = closed["requests_per_s"]
        opened = run_level(workload, Level(rate=3 * capacity), live=False)
    finally:
        server.stop()
    assert opened["sent"] == opened["ok"] + sum(opened["failed"].values())
    # Three times capacity: the queue, and so the latency, grows by about 2 s per second of the run.
    quarters = opened["p50_by_quarter_ms"]
    assert quarters == sorted(quarters) and quarters[-1] - quarters[0] > 0.5 * workload.duration_s * 1e3, quarters
    assert opened["p50_ms"] > 3 * closed["p50_ms"]
    assert opened["requests_per_s"] < 1.5 * capacity
