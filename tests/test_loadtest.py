"""The load generator against real servers: counts, percentiles, outputs, and the open loop's schedule.

Only what holds on any machine: that latency rises through an overloaded open loop is a timing claim,
measured by bench/open_loop.py."""
import csv
import json
import subprocess
import sys

import pytest

from client.loadtest import Level, Workload, arrival_offsets, run_level, split
from client.spawn import ROOT, SpawnedServer


@pytest.mark.slow
def test_closed_loop_cli_with_spawned_server(trained_repository, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "server.loadtest", "--spawn-server", str(trained_repository), "--model", "lenet_bn",
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


@pytest.mark.slow     # end to end, several seconds: in the full run (docs/development.md)
def test_open_loop_sends_its_schedule_and_reports_each_quarter(trained_repository, tmp_path):
    """An open loop sends the requests its seeded Poisson schedule holds, whatever the server does, and reports
    the p50 of each quarter of the run: at a rate far below lenet_bn's capacity, every one answers."""
    server = SpawnedServer(trained_repository, log_path=tmp_path / "server.log")
    workload = Workload(target=server.target, model="lenet_bn", warmup_s=0.5, duration_s=2.0, processes=2, seed=3)
    level = Level(rate=40)
    try:
        opened = run_level(workload, level, live=False)
    finally:
        assert server.stop() == 0, server.log()
    scheduled = sum(offset >= workload.warmup_s for index, share in enumerate(split(level.rate, 2, integer=False))
                    for offset in arrival_offsets(workload, share, index))
    assert 40 < scheduled < 120, "about rate × duration"
    assert opened["mode"] == "open" and opened["sent"] == scheduled
    assert opened["ok"] == scheduled and not opened["failed"] and not opened["first_errors"]
    assert len(opened["p50_by_quarter_ms"]) == 4 and all(q > 0 for q in opened["p50_by_quarter_ms"])
    assert opened["p50_ms"] <= opened["p90_ms"] <= opened["p99_ms"] <= opened["max_ms"]
    assert opened["elapsed_s"] >= workload.duration_s


def test_the_open_loop_schedule_depends_on_the_seed_alone():
    workload = Workload(target="unused", model="unused", warmup_s=1.0, duration_s=4.0, seed=7)
    offsets = arrival_offsets(workload, 50.0, 0)
    assert offsets == arrival_offsets(workload, 50.0, 0) and offsets != arrival_offsets(workload, 50.0, 1)
    assert offsets[0] == 0 and offsets == sorted(offsets) and offsets[-1] < 5.0
    assert 150 < len(offsets) < 350, "Poisson at 50/s for 5 s: about 250"
