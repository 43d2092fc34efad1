"""Start-up failures a user can fix are one line on stderr, `error: ...`, whoever found them (server/startup.py)."""
import socket
import subprocess
import sys

import pytest

from client.spawn import ROOT


def start(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server", "--model-repository", str(ROOT / "model_repository"),
                           "--models", "lenet", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def assert_one_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if not line[:4].isdigit()]   # log lines start with a date
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr[-2000:]
    assert all(fragment in errors[0] for fragment in fragments), errors[0]


def test_a_busy_grpc_port_is_our_one_line_and_not_grpcs_own():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = start("--port", str(port))
    assert "add_port" not in result.stderr and "Failed to add port" not in result.stderr, result.stderr
    assert_one_line(result, f"127.0.0.1:{port}", "--port")


@pytest.mark.parametrize("args, fragment", [
    (["--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
    (["--auth-token-file", "/nonexistent/token"], "--auth-token-file /nonexistent/token"),
    (["--auth-open", "everything"], "--auth-open: unknown everything"),
])
def test_flag_mistakes_are_one_line(args, fragment):
    assert_one_line(start(*args), fragment)
