"""server/cpu_limit.py on fixture cgroup trees: cgroup v2 `cpu.max` (at the root and along the process's own
cgroup), cgroup v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`, no limit, malformed files, and the affinity mask
as the ceiling."""
from pathlib import Path

import pytest

from server.cpu_limit import CpuLimit, affinity_cpus, cpu_limit


def v2(root: Path, cpu_max: str | None, own_cgroup: str = "/", nested: dict[str, str] | None = None) -> Path:
    """A cgroup v2 tree: the root's cpu.max (None: no file, as the host's root cgroup), and cpu.max files in
    nested cgroups; returns the /proc/self/cgroup stand-in naming the process's own cgroup."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    if cpu_max is not None:
        (root / "cpu.max").write_text(cpu_max + "\n")
    for path, text in (nested or {}).items():
        (root / path).mkdir(parents=True, exist_ok=True)
        (root / path / "cpu.max").write_text(text + "\n")
    proc = root.parent / "proc-self-cgroup"
    proc.write_text(f"0::{own_cgroup}\n")
    return proc


def v1(root: Path, quota: str, period: str = "100000", controller: str = "cpu") -> Path:
    (root / controller).mkdir(parents=True)
    (root / controller / "cpu.cfs_quota_us").write_text(quota + "\n")
    (root / controller / "cpu.cfs_period_us").write_text(period + "\n")
    return root.parent / "no-proc-self-cgroup"


@pytest.mark.parametrize("cpu_max, affinity, cpus, description", [
    ("200000 100000", 8, 2, "2 CPUs (cgroup v2 cpu.max 200000/100000)"),
    ("150000 100000", 8, 2, "2 CPUs (cgroup v2 cpu.max 150000/100000)"),        # 1.5 CPUs: rounded up
    ("50000 100000", 8, 1, "1 CPU (cgroup v2 cpu.max 50000/100000)"),           # half a CPU: still one
    ("1000 100000", 8, 1, "1 CPU (cgroup v2 cpu.max 1000/100000)"),
    ("400000 100000", 2, 2, "2 CPUs (affinity mask, below cgroup v2 cpu.max 400000/100000)"),
    ("max 100000", 6, 6, "6 CPUs (affinity mask; cgroup v2 cpu.max: no limit)"),
])
def test_cgroup_v2_cpu_max(tmp_path, cpu_max, affinity, cpus, description):
    proc = v2(tmp_path / "cgroup", cpu_max)
    assert cpu_limit(tmp_path / "cgroup", proc, affinity=affinity) == CpuLimit(cpus, description)


def test_cgroup_v2_the_tightest_limit_along_the_own_cgroup_path_applies(tmp_path):
    """No cgroup namespace (a systemd unit with CPUQuota=, a container sharing the host's view): the root
    has no cpu.max, the process's slice allows 4 CPUs and its service 3; a sibling's limit does not count."""
    root = tmp_path / "cgroup"
    proc = v2(root, None, "/system.slice/cnnserve.service", nested={
        "system.slice": "400000 100000", "system.slice/cnnserve.service": "300000 100000",
        "system.slice/other.service": "100000 100000"})
    assert cpu_limit(root, proc, affinity=16) == CpuLimit(3, "3 CPUs (cgroup v2 cpu.max of /system.slice/cnnserve.service "
                                                               "300000/100000)")
    (root / "system.slice" / "cpu.max").write_text("250000 100000\n")       # the parent's is now tighter
    assert cpu_limit(root, proc, affinity=16) == CpuLimit(3, "3 CPUs (cgroup v2 cpu.max of /system.slice 250000/100000)")


def test_cgroup_v2_without_any_cpu_max_is_the_affinity_mask(tmp_path):
    proc = v2(tmp_path / "cgroup", None, "/user.slice")
    assert cpu_limit(tmp_path / "cgroup", proc, affinity=4) == CpuLimit(4, "4 CPUs (affinity mask; no cgroup v2 cpu.max)")


@pytest.mark.parametrize("controller", ["cpu", "cpu,cpuacct"])
@pytest.mark.parametrize("quota, period, affinity, cpus, description", [
    ("200000", "100000", 8, 2, "2 CPUs (cgroup v1 cpu.cfs_quota_us/cfs_period_us 200000/100000)"),
    ("25000", "50000", 8, 1, "1 CPU (cgroup v1 cpu.cfs_quota_us/cfs_period_us 25000/50000)"),
    ("350000", "100000", 8, 4, "4 CPUs (cgroup v1 cpu.cfs_quota_us/cfs_period_us 350000/100000)"),
    ("-1", "100000", 3, 3, "3 CPUs (affinity mask; cgroup v1 cpu.cfs_quota_us/cfs_period_us: no limit)"),
    ("800000", "100000", 2, 2, "2 CPUs (affinity mask, below cgroup v1 cpu.cfs_quota_us/cfs_period_us 800000/100000)"),
])
def test_cgroup_v1_cfs_quota(tmp_path, controller, quota, period, affinity, cpus, description):
    proc = v1(tmp_path / "cgroup", quota, period, controller)
    assert cpu_limit(tmp_path / "cgroup", proc, affinity=affinity) == CpuLimit(cpus, description)


@pytest.mark.parametrize("text", ["", "garbage", "200000", "200000 0", "0 100000", "-5 100000", "max", "2.5 1",
                                  "200000 100000 7", "max max"])
def test_malformed_cgroup_v2_cpu_max_is_ignored_and_said_so(tmp_path, text):
    proc = v2(tmp_path / "cgroup", text)
    limit = cpu_limit(tmp_path / "cgroup", proc, affinity=4)
    assert limit.cpus == 4
    assert limit.description.startswith("4 CPUs (affinity mask; ignored malformed cgroup v2 cpu.max: ")


def test_a_malformed_file_does_not_hide_a_valid_limit_elsewhere(tmp_path):
    root = tmp_path / "cgroup"
    proc = v2(root, "nonsense", "/kubepods/pod1", nested={"kubepods/pod1": "200000 100000"})
    assert cpu_limit(root, proc, affinity=8) == CpuLimit(
        2, "2 CPUs (cgroup v2 cpu.max of /kubepods/pod1 200000/100000; ignored malformed cgroup v2 cpu.max: 'nonsense')")


@pytest.mark.parametrize("quota, period", [("abc", "100000"), ("200000", ""), ("0", "100000"), ("200000", "-1")])
def test_malformed_cgroup_v1_files_are_ignored(tmp_path, quota, period):
    proc = v1(tmp_path / "cgroup", quota, period)
    limit = cpu_limit(tmp_path / "cgroup", proc, affinity=5)
    assert limit.cpus == 5 and "ignored malformed cgroup v1" in limit.description


def test_no_cgroup_filesystem_at_all_is_the_affinity_mask(tmp_path):
    limit = cpu_limit(tmp_path / "nothing-here", tmp_path / "no-proc", affinity=3)
    assert limit == CpuLimit(3, "3 CPUs (affinity mask; no cgroup CPU quota found)")


def test_defaults_read_this_machine(tmp_path):
    """The real /sys/fs/cgroup and affinity mask: an answer between 1 and the affinity mask, with its source."""
    cpus, description = cpu_limit()
    assert 1 <= cpus <= affinity_cpus() and description.startswith(f"{cpus} CPU")


def test_the_server_sizes_onnx_runtime_threads_to_a_quota_below_its_cores(monkeypatch):
    """One process under a 1-CPU quota on 2 cores gets 1 intra-op thread; --threads wins; with --workers the
    workers divide the limit among themselves instead (server/workers.py), so the config is left alone."""
    import server.__main__ as main
    from server.cpu_limit import CpuLimit
    monkeypatch.setattr(main, "cpu_limit", lambda: CpuLimit(1, "1 CPU (cgroup v2 cpu.max 100000/100000)"))
    monkeypatch.setattr(main, "affinity_cpus", lambda: 2)
    config, _ = main.parse_args([])
    assert main.size_threads_to_cpu_limit(config, workers=1).runtime.intra_op_threads == 1
    assert main.size_threads_to_cpu_limit(config, workers=2).runtime.intra_op_threads == 0
    explicit, _ = main.parse_args(["--threads", "2"])
    assert main.size_threads_to_cpu_limit(explicit, workers=1).runtime.intra_op_threads == 2
    monkeypatch.setattr(main, "affinity_cpus", lambda: 1)
    assert main.size_threads_to_cpu_limit(config, workers=1).runtime.intra_op_threads == 0
