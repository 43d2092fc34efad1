"""Explicit model control with `--workers N`: a load or unload received by one worker is applied by every worker.

SO_REUSEPORT hands each connection to one worker, so a RepositoryModelLoad/Unload reaches one worker only. That
worker writes the command to a log in the directory the parent made for the workers (the one they share their
statistics through, server/metrics.py): one file per command, `command-<sequence>.json`, the sequence number
taken by creating the file exclusively (`os.link` fails on a number another worker took), so every worker sees
the same commands in the same order. Every worker (the one that wrote it too) reads the log every `FOLLOW_S`,
applies the commands it has not applied, in order, and rewrites its acknowledgement, `ack-<index>.json`: the last
sequence number applied and each command's outcome ("" for success, else the reason). The worker that wrote the
command answers the call once every worker acknowledged it: success when all applied it, else an error naming the
workers that did not and why, or DEADLINE_EXCEEDED naming those that did not answer within `WAIT_S`.

A worker that starts (the supervisor's replacement for one that died) reads the log first: each model's last
command decides whether it loads at start, and its acknowledgement starts at the log's last sequence number, so
it converges on what the others serve without replaying every load and unload.
"""
from __future__ import annotations

import asyncio
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

FOLLOW_S = 0.1          # how often a worker reads the log (as often as it publishes its statistics)
WAIT_S = 120.0          # how long a load or unload call waits for every worker's acknowledgement
KEPT_OUTCOMES = 1000    # the outcomes an acknowledgement keeps (the newest)
LOAD, UNLOAD = "load", "unload"


@dataclass(frozen=True)
class Command:
    sequence: int
    action: str         # LOAD or UNLOAD
    name: str


def write_atomically(path: Path, data: dict) -> None:
    """Written whole under another name, then renamed, so a reader sees the old file or the new one."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(data))
    os.replace(partial, path)


class ControlLog:
    def __init__(self, directory: Path, worker: int, workers: int):
        self.directory, self.worker, self.workers = directory, worker, workers
        directory.mkdir(exist_ok=True)
        self.applied = 0
        self.outcomes: dict[int, str] = {}

    def commands(self, after: int = 0) -> list[Command]:
        found = []
        for path in self.directory.glob("command-*.json"):
            data = json.loads(path.read_text())
            if data["sequence"] > after:
                found.append(Command(data["sequence"], data["action"], data["name"]))
        return sorted(found, key=lambda command: command.sequence)

    def append(self, action: str, name: str) -> int:
        """The command's sequence number: the next one free, taken by creating its file exclusively."""
        partial = self.directory / f".command.{os.getpid()}.{threading.get_ident()}.partial"   # this call's own
        sequence = max((command.sequence for command in self.commands()), default=0) + 1
        while True:
            partial.write_text(json.dumps({"sequence": sequence, "action": action, "name": name}))
            try:
                os.link(partial, self.directory / f"command-{sequence:09d}.json")
                break
            except FileExistsError:     # another worker took this number meanwhile
                sequence += 1
        partial.unlink()
        return sequence

    def last_word(self) -> tuple[dict[str, Command], int]:
        """Each model's last command, and the last sequence number: what a worker that starts converges on."""
        commands = self.commands()
        return {command.name: command for command in commands}, commands[-1].sequence if commands else 0

    def acknowledge(self, sequence: int, outcome: str) -> None:
        self.applied = max(self.applied, sequence)
        self.outcomes[sequence] = outcome
        for old in sorted(self.outcomes)[:-KEPT_OUTCOMES]:
            del self.outcomes[old]
        write_atomically(self.directory / f"ack-{self.worker}.json",
                         {"applied": self.applied, "pid": os.getpid(), "outcomes": self.outcomes})

    def outcomes_of(self, sequence: int) -> dict[int, str | None]:
        """Each worker's outcome of a command: "" applied, a reason, or None while it has not acknowledged it."""
        outcomes: dict[int, str | None] = {}
        for worker in range(self.workers):
            try:
                ack = json.loads((self.directory / f"ack-{worker}.json").read_text())
            except FileNotFoundError:        # a worker still starting
                ack = {"applied": 0, "outcomes": {}}
            outcomes[worker] = ack["outcomes"].get(str(sequence), "") if ack["applied"] >= sequence else None
        return outcomes

    async def wait(self, sequence: int, timeout: float = WAIT_S) -> dict[int, str | None]:
        """Every worker's outcome of a command, once all have one or when `timeout` is over (None: no answer)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            outcomes = await asyncio.to_thread(self.outcomes_of, sequence)
            if None not in outcomes.values() or asyncio.get_running_loop().time() > deadline:
                return outcomes
            await asyncio.sleep(FOLLOW_S / 2)
