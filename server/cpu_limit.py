"""The CPUs this process may use: a container's CPU limit (the cgroup CPU quota), not the node's core count.

A Kubernetes pod with `limits: cpu: 2` on a 64-core node still sees 64 cores in `os.cpu_count()` and,
without a cpuset, in its affinity mask too; sizing ONNX Runtime's thread pool or `--workers auto` from
either gives dozens of threads that the CFS quota then throttles, the most common performance complaint
in KServe's and Triton's issues (kserve#1031, triton onnxruntime_backend#245). The quota is where the
limit lives:

- cgroup v2: `cpu.max`, "max 100000" (no limit) or "<quota> <period>" in microseconds ("200000 100000":
  2 CPUs); the limit that applies is the smallest along the process's cgroup path, so the file at the
  cgroup root (a container's own cgroup, under a cgroup namespace) and those from the process's own cgroup
  (`/proc/self/cgroup`, e.g. a systemd unit with CPUQuota=) up to the root are all read;
- cgroup v1: `cpu/cpu.cfs_quota_us` (-1: no limit) over `cpu/cpu.cfs_period_us`.

The answer is ceil(quota / period), at least 1 and never more than the affinity mask (a cpuset or
`taskset` narrower than the quota wins); with no quota, the affinity mask. A file that cannot be parsed
is ignored, and said so in the description, rather than stopping the server.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


class CpuLimit(NamedTuple):
    cpus: int
    description: str    # for the start-up log: "2 CPUs (cgroup v2 cpu.max 200000/100000)"


class _Quota(NamedTuple):
    quota: int
    period: int
    where: str          # "cgroup v2 cpu.max", with the cgroup's path when it is not the root

    @property
    def cpus(self) -> float:
        return self.quota / self.period


def affinity_cpus() -> int:
    """The CPUs in this process's affinity mask (a cpuset's or taskset's limit, not the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_limit(cgroup_root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP,
              affinity: int | None = None) -> CpuLimit:
    """The CPUs this process may use and where that number came from (see the module's docstring).
    `cgroup_root`, `proc_self_cgroup` and `affinity` are parameters for the tests' fixture files."""
    affinity = affinity_cpus() if affinity is None else max(1, affinity)
    quotas, notes = _read_quotas(Path(cgroup_root), Path(proc_self_cgroup))
    if not quotas:
        detail = "; ".join(["affinity mask", *notes])
        return CpuLimit(affinity, f"{_cpus(affinity)} ({detail})")
    tightest = min(quotas, key=lambda q: q.cpus)
    limited = max(1, math.ceil(tightest.cpus))
    where = f"{tightest.where} {tightest.quota}/{tightest.period}"
    if limited > affinity:
        return CpuLimit(affinity, f"{_cpus(affinity)} (affinity mask, below {where})")
    return CpuLimit(limited, f"{_cpus(limited)} ({'; '.join([where, *notes])})")


def _cpus(n: int) -> str:
    return f"{n} CPU" if n == 1 else f"{n} CPUs"


def _read_quotas(root: Path, proc_self_cgroup: Path) -> tuple[list[_Quota], list[str]]:
    """The quotas found (none: no limit) and notes on the files that were ignored."""
    if (root / "cgroup.controllers").is_file() or (root / "cpu.max").is_file():
        return _read_v2(root, proc_self_cgroup)
    for controller in ("cpu", "cpu,cpuacct"):
        if (root / controller / "cpu.cfs_quota_us").is_file():
            return _read_v1(root / controller)
    return [], ["no cgroup CPU quota found"]


def _read_v2(root: Path, proc_self_cgroup: Path) -> tuple[list[_Quota], list[str]]:
    quotas, notes, unlimited = [], [], False
    for directory in _v2_directories(root, proc_self_cgroup):
        path = directory / "cpu.max"
        try:
            text = path.read_text().strip()
        except OSError:
            continue             # the root cgroup has no cpu.max; nor has a cgroup without the cpu controller
        relative = directory.relative_to(root).as_posix()
        where = "cgroup v2 cpu.max" + ("" if relative == "." else f" of /{relative}")
        fields = text.split()
        if len(fields) == 2 and fields[0] == "max" and _positive(fields[1]):
            unlimited = True     # no limit at this level
            continue
        if len(fields) == 2 and _positive(fields[0]) and _positive(fields[1]):
            quotas.append(_Quota(int(fields[0]), int(fields[1]), where))
        else:
            notes.append(f"ignored malformed {where}: {text[:40]!r}")
    if not quotas and not notes:
        notes.append("cgroup v2 cpu.max: no limit" if unlimited else "no cgroup v2 cpu.max")
    return quotas, notes


def _v2_directories(root: Path, proc_self_cgroup: Path) -> list[Path]:
    """The cgroup root, then the process's own cgroup and its ancestors when they are visible under it."""
    directories = [root]
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return directories
    for line in lines:
        hierarchy, _, path = line.partition("::")      # v2: "0::/system.slice/x.service"
        if hierarchy != "0" or not path.startswith("/"):
            continue
        parts = [part for part in path.split("/") if part and part not in (".", "..")]
        for depth in range(len(parts), 0, -1):
            directory = root.joinpath(*parts[:depth])
            if directory.is_dir():
                directories.append(directory)
    return directories


def _read_v1(controller: Path) -> tuple[list[_Quota], list[str]]:
    where = "cgroup v1 cpu.cfs_quota_us/cfs_period_us"
    try:
        quota_text = (controller / "cpu.cfs_quota_us").read_text().strip()
        period_text = (controller / "cpu.cfs_period_us").read_text().strip()
    except OSError as error:
        return [], [f"ignored unreadable {where}: {error.strerror or error}"]
    if quota_text == "-1" and _positive(period_text):
        return [], [f"{where}: no limit"]
    if _positive(quota_text) and _positive(period_text):
        return [_Quota(int(quota_text), int(period_text), where)], []
    return [], [f"ignored malformed {where}: {quota_text[:20]!r}/{period_text[:20]!r}"]


def _positive(text: str) -> bool:
    return text.isdigit() and int(text) > 0
