"""The KServe v2 HTTP front under hostile input, against a real server: every refusal is a 4xx with a JSON
`error`, never a 500, a plain-text page, a trace or a path; header size and time are bounded however the
bytes arrive; connections are capped; server readiness waits for every model."""
import json
import random
import socket
import time
import urllib.parse

import grpc
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from client.spawn import SpawnedServer
from server.http_guard import MAX_HEADER_BYTES

HEADER_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 16


@pytest.fixture(scope="module")
def server(committed_repository, tmp_path_factory):
    process = SpawnedServer(committed_repository, ["--models", "lenet_bn", "--http-header-timeout", str(HEADER_TIMEOUT_S),
                                                 "--http-max-connections", str(MAX_CONNECTIONS)],
                            log_path=tmp_path_factory.mktemp("logs") / "server.log", with_http=True)
    yield process
    assert process.stop() == 0, process.log()


def raw_request(server, data: bytes, timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send `data` as it is on a new connection; the status, headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=timeout) as s:
        s.sendall(data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def request(server, method: str, path: str, body: bytes = b"", headers: dict[str, bytes] | None = None):
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(body)}\r\n".encode()
    for name, value in (headers or {}).items():
        head += name.encode() + b": " + value + b"\r\n"
    return raw_request(server, head + b"\r\n" + body)


def assert_json_error(status: int, headers: dict, body: bytes, expected: int, fragment: str = "") -> None:
    assert status == expected, body[:300]
    assert headers["content-type"] == "application/json", headers
    error = json.loads(body)["error"]
    assert fragment in error and "Traceback" not in error and "/work" not in error and "site-packages" not in error


def test_deeply_nested_json_is_a_400(server):
    body = b"[" * 10_000 + b"]" * 10_000
    assert_json_error(*request(server, "POST", "/v2/models/lenet_bn/infer", body), 400, "nests deeper")
    body = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert_json_error(*request(server, "POST", "/v2/models/lenet_bn/infer", body), 400, "nests deeper")


def test_non_ascii_digits_are_a_400_not_a_500(server):
    body = json.dumps({"inputs": []}).encode()
    for header in (b"\xb2", b"\xd9\xa3", b"9" * 5000):
        assert_json_error(*request(server, "POST", "/v2/models/lenet_bn/infer", body,
                                   {"Inference-Header-Content-Length": header}), 400, "Inference-Header-Content-Length")
    for version in ("%C2%B2", "%D9%A3", "9" * 5000):
        base = f"/v2/models/lenet_bn/versions/{version}"
        for method, path in (("GET", base), ("GET", base + "/ready"), ("GET", base + "/config"),
                             ("POST", base + "/infer")):
            assert_json_error(*request(server, method, path, body), 400, "not a version number")
    kserve = tgrpc.InferenceServerClient(server.target)
    with pytest.raises(InferenceServerException) as error:
        kserve.get_model_metadata("lenet_bn", "\u00b2")
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_one_header_limit_however_the_bytes_arrive(server):
    big = b"x" * 100_000
    # in one read
    status, headers, body = request(server, "GET", "/v2/health/live", headers={"X-Big": big})
    assert_json_error(status, headers, body, 431, f"{MAX_HEADER_BYTES:,} bytes")
    # in pieces
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for i in range(0, len(big), 4096):
                s.sendall(big[i:i + 4096])
                time.sleep(0.001)
            s.sendall(b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass             # refused before the end of it
        answer = s.recv(65536)
    assert answer == b"" or answer.split(b" ")[1] in (b"400", b"431"), answer[:200]
    # just under the limit passes
    status, _, _ = request(server, "GET", "/v2/health/live", headers={"X-Big": b"y" * (MAX_HEADER_BYTES - 200)})
    assert status == 200


def test_every_v2_error_is_json(server):
    for method in ("OPTIONS", "PUT", "DELETE", "PATCH"):
        assert_json_error(*request(server, method, "/v2/models/lenet_bn"), 405, "Method Not Allowed")
        assert_json_error(*request(server, method, "/v2/models/lenet_bn/infer"), 405)
    assert_json_error(*request(server, "GET", "/v2/models/a%2fb/ready"), 404)
    assert_json_error(*request(server, "GET", "/v2/nothing/here"), 404)


def test_a_client_slow_with_its_headers_is_disconnected(server):
    """Slowloris: one byte at a time never finishes its headers; the server closes it after the header timeout,
    and a silent connection too, while the server goes on answering."""
    slow, silent = (socket.create_connection(("127.0.0.1", server.http_port), timeout=10) for _ in range(2))
    started = time.monotonic()
    closed_after = None
    for byte in b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
        try:
            slow.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            closed_after = time.monotonic() - started
            break
        time.sleep(0.1)
        if time.monotonic() - started > HEADER_TIMEOUT_S + 0.5:
            slow.settimeout(5)
            if slow.recv(1) == b"":
                closed_after = time.monotonic() - started
                break
    assert closed_after is not None and closed_after < HEADER_TIMEOUT_S + 5
    silent.settimeout(HEADER_TIMEOUT_S + 5)
    assert silent.recv(1) == b""
    slow.close()
    silent.close()
    assert request(server, "GET", "/v2/health/live")[0] == 200


def test_connections_beyond_the_cap_are_closed_at_once(server):
    held = [socket.create_connection(("127.0.0.1", server.http_port), timeout=5) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", server.http_port), timeout=5)
        try:
            extra.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert extra.recv(100) == b""
        except (BrokenPipeError, ConnectionResetError):
            pass                                # closed before or as the request arrived
        extra.close()
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 5
    while request(server, "GET", "/v2/health/live")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert request(server, "GET", "/v2/health/live")[0] == 200


@pytest.mark.slow     # end to end, several seconds: in the full run (docs/development.md)
def test_server_readiness_waits_for_every_model(committed_repository, tmp_path):
    """While googlenet loads, /v2/health/ready and KServe ServerReady say not ready even though lenet_bn is."""
    process = SpawnedServer(committed_repository, ["--models", "lenet_bn,googlenet,densenet", "--warmup-runs", "20"],
                            log_path=tmp_path / "s.log", with_http=True, wait=False)
    kserve = tgrpc.InferenceServerClient(process.target)
    seen = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                ready = request(process, "GET", "/v2/health/ready")[0]
                grpc_ready = kserve.is_server_ready()
                models = [request(process, "GET", f"/v2/models/{m}/ready")[0] for m in ("lenet_bn", "googlenet", "densenet")]
            except (OSError, InferenceServerException):
                time.sleep(0.05)
                continue
            seen.append((ready, grpc_ready, tuple(models)))
            if ready == 200 and grpc_ready:     # the two questions are asked one after the other: both, to end
                break
            time.sleep(0.01)
        final_models = [request(process, "GET", f"/v2/models/{m}/ready")[0] for m in ("lenet_bn", "googlenet", "densenet")]
    finally:
        assert process.stop() == 0, process.log()
    assert seen and (seen[-1][0] == 200 and seen[-1][1]), seen[-5:]
    assert final_models == [200, 200, 200]
    # before the end, whenever a model answered 503 the server was not ready on either protocol
    assert all(r != 200 and not g for r, g, m in seen if 503 in m), seen


@pytest.mark.parametrize("seconds", [3, pytest.param(20, marks=pytest.mark.slow)])
def test_fuzzed_requests_on_every_v2_route_get_no_5xx(server, seconds):
    """Random methods, paths, headers and bodies on every route, for a bounded time; no 5xx, no leak, still healthy.
    A few seconds in the fast tests; the slow ones go on longer, from another seed."""
    rng = random.Random(2026 + seconds)
    routes = ["/v2", "/v2/health/live", "/v2/health/ready", "/v2/repository/index"] + [
        f"/v2/models/{name}{version}{suffix}" for name in ("lenet_bn", "x", "%00", "l%2fb", "\u00e9".encode().hex())
        for version in ("", "/versions/1", "/versions/0", "/versions/%C2%B2", "/versions/-1")
        for suffix in ("", "/ready", "/config", "/stats", "/infer")]
    valid = {"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "UINT8", "data": [0] * 784}]}

    def body() -> bytes:
        kind = rng.randrange(6)
        if kind == 0:
            return rng.randbytes(rng.randrange(0, 2000))
        if kind == 1:
            return json.dumps(valid).encode()
        if kind == 2:                       # a valid body with one field damaged
            damaged = json.loads(json.dumps(valid))
            tensor = damaged["inputs"][0]
            key = rng.choice(["name", "shape", "datatype", "data", "parameters"])
            tensor[key] = rng.choice([None, -1, 2**70, "x" * 300, [], {}, [[1]], ["\u00b2"], 1.5, True])
            return json.dumps(damaged).encode()
        if kind == 3:
            return json.dumps({"inputs": [{"name": "image_encoded", "datatype": "BYTES", "shape": [rng.randrange(-2, 70)],
                                           "parameters": {"binary_data_size": rng.randrange(-5, 100)}}],
                               "outputs": rng.choice([None, [], [{"name": "all"}], [{"parameters": {"classification": -3}}],
                                                      "x", [{"name": "conv1", "parameters": {"datatype": "FP64"}}]])}
                              ).encode() + rng.randbytes(rng.randrange(0, 100))
        if kind == 4:
            depth = rng.randrange(1, 5000)
            return b"[" * depth + b"]" * depth
        return b""

    def headers() -> dict[str, bytes]:
        chosen = {}
        if rng.random() < 0.5:
            chosen["Inference-Header-Content-Length"] = rng.choice(
                [b"\xb2", b"-1", b"0", b"99999999999999999999999", b"10", b" 5", b"1e3", str(rng.randrange(0, 3000)).encode()])
        if rng.random() < 0.3:
            chosen["Content-Type"] = rng.choice([b"application/json", b"\xff\xfe", b"text/plain"])
        if rng.random() < 0.2:
            chosen["Authorization"] = rng.randbytes(20).replace(b"\r", b"").replace(b"\n", b"")
        return chosen

    tried, statuses = 0, {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        path = rng.choice(routes)
        if rng.random() < 0.2:
            path += rng.choice(["?", "/", "%", "%ff", "//", "/../..", "?x=" + urllib.parse.quote("\u00b2")])
        method = rng.choice(["GET", "POST", "POST", "POST", "PUT", "DELETE", "OPTIONS", "HEAD"])
        status, answer_headers, answer = request(server, method, path, body(), headers())
        tried += 1
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500, (method, path, status, answer[:300])
        if method != "HEAD" and status >= 400 and path.startswith("/v2"):
            assert answer_headers.get("content-type") == "application/json", (method, path, status, answer[:200])
        text = answer[:4000].decode("latin-1")
        assert "Traceback" not in text and "site-packages" not in text and str(server.log_path.parent) not in text
    assert tried > 5 * seconds, tried
    assert request(server, "GET", "/v2/health/ready")[0] == 200
    assert server.health_status() == 1
    print(f"fuzzed {tried} HTTP requests: {dict(sorted(statuses.items()))}")


def test_kserve_grpc_version_strings_are_invalid_argument(server):
    stub = tgrpc.InferenceServerClient(server.target)
    for version in ("\u00b2", "9" * 5000, "-1"):
        with pytest.raises(InferenceServerException) as error:
            stub.is_model_ready("lenet_bn", version) or stub.get_model_config("lenet_bn", version)
        assert error.value.status() == f"StatusCode.{grpc.StatusCode.INVALID_ARGUMENT.name}"
