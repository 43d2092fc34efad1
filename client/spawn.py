"""Start `python -m server` as a child process on a free loopback port and wait until it serves.

A harness, not part of the runtime (`server/`): used by `server.loadtest --spawn-server`, the
benchmarks and the tests.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.channel import ClientSecurity, connect
from cnnserve.proto import classifier_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
WAIT_POLL_MS = 50      # how often a starting server is asked whether it serves yet


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SpawnedServer:
    def __init__(self, repository: Path | None, args: list[str] = (), log_path: Path | None = None,
                 with_metrics: bool = False, wait: bool = True, timeout: float = 120, with_http: bool = False,
                 security: ClientSecurity | None = None, command: list[str] | None = None, cwd: Path = ROOT):
        """`security`: how the harness itself connects (a TLS server needs its CA here); `command`: what starts
        the server in place of `python -m server` (given the same arguments); `cwd`: where it runs (the default
        repository, `model_repository`, is relative to it)."""
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.metrics_port = free_port() if with_metrics else None
        self.http_port = free_port() if with_http else None
        self.http_target = f"127.0.0.1:{self.http_port}" if with_http else None
        args = [*(["--model-repository", str(repository)] if repository else []),   # None: the server's default
                *args, *(["--metrics-port", str(self.metrics_port)] if with_metrics else []),
                *(["--http-port", str(self.http_port)] if with_http else [])]
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="cnnserve-", suffix=".log")[1])
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [*(command or [sys.executable, "-m", "server"]), "--port", str(self.port), *args],
            cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.channel = connect(self.target, security=security, retry_connect_ms=WAIT_POLL_MS)
        self.call_metadata = security.metadata() if security else ()
        self.stub = classifier_pb2_grpc.ClassifierStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        if wait:
            try:
                self.wait_serving(timeout)
            except BaseException:       # never leave a server process behind the caller that gave up on it
                self.stop()
                raise

    def health_status(self, service: str = "") -> int | None:
        """The health status, or None while the port is not answering yet."""
        try:
            return self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=1,
                                     metadata=self.call_metadata).status
        except grpc.RpcError:
            return None

    def wait_serving(self, timeout: float = 120) -> SpawnedServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            if self.health_status() == health_pb2.HealthCheckResponse.SERVING:
                return self
            time.sleep(WAIT_POLL_MS / 1e3)
        raise TimeoutError(f"server not SERVING after {timeout} s:\n{self.log()}")

    def metrics(self) -> str:
        from urllib.request import urlopen
        return urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then wait; returns the exit code."""
        try:
            return terminate(self.process, timeout)
        finally:
            self.channel.close()
            self._log.close()


def terminate(process: subprocess.Popen, timeout: float = 30) -> int:
    """SIGTERM, wait up to `timeout` for the exit code; killed if it has not exited by then."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
