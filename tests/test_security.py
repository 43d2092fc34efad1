"""TLS, mutual TLS and the bearer token, with certificates made at test time: the server refuses what
it must, the client and the load generator speak all of it, and health stays open for probes."""
import datetime
import ipaddress
import subprocess
import sys

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.channel import ClientSecurity, connect
from client.cli import raw_image
from client.spawn import ROOT, SpawnedServer
from cnnserve.proto import classifier_pb2 as pb
from cnnserve.proto import classifier_pb2_grpc

TOKEN = "s3cret-token-for-tests-0123456789"


def certificate(name: str, issuer_key, issuer_name, ca: bool, key=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name or subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return key, builder.sign(issuer_key or key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = certificate("cnnserve test CA", None, None, ca=True)
    files = {"ca.pem": ca_cert}
    for role in ("server", "client"):
        key, cert = certificate(role, ca_key, ca_cert.subject, ca=False)
        files[f"{role}.pem"] = cert
        (directory / f"{role}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    for name, cert in files.items():
        (directory / name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "token").write_text(TOKEN + "\n")
    return directory


@pytest.fixture(scope="module")
def server(committed_repository, pki, tmp_path_factory):
    """mTLS and a token, on gRPC and on HTTP."""
    trusted = ClientSecurity(tls_ca=pki / "ca.pem", tls_cert=pki / "client.pem", tls_key=pki / "client.key")
    process = SpawnedServer(committed_repository, [
        "--models", "lenet_bn", "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
        "--tls-client-ca", str(pki / "ca.pem"), "--auth-token-file", str(pki / "token")],
        with_http=True, security=trusted, log_path=tmp_path_factory.mktemp("logs") / "server.log")
    yield process
    assert process.stop() == 0


def classify(target, security, token=None):
    request = pb.ClassifyRequest(model="lenet_bn", images=[raw_image(np.zeros((28, 28), np.uint8))])
    with connect(target, security=security) as channel:
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return classifier_pb2_grpc.ClassifierStub(channel).Classify(request, timeout=10, metadata=metadata)


def test_mtls_and_token_are_required_and_health_stays_open(server, pki):
    full = ClientSecurity(tls_ca=pki / "ca.pem", tls_cert=pki / "client.pem", tls_key=pki / "client.key")
    assert len(classify(server.target, full, TOKEN).results) == 1
    with pytest.raises(grpc.RpcError) as error:
        classify(server.target, full)                                      # no token
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as error:
        classify(server.target, full, "wrong-token-of-the-same-length-xx")
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as error:
        classify(server.target, ClientSecurity(tls_ca=pki / "ca.pem"), TOKEN)   # no client certificate
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as error:
        classify(server.target, None, TOKEN)                               # plaintext
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    with connect(server.target, security=full) as channel:                 # probes need no token
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.slow
def test_the_client_and_the_load_generator_speak_tls_and_the_token(server, pki):
    flags = ["--tls-ca", str(pki / "ca.pem"), "--tls-cert", str(pki / "client.pem"), "--tls-key", str(pki / "client.key"),
             "--token-file", str(pki / "token")]
    client = subprocess.run([sys.executable, "-m", "server.client", "--target", server.target, *flags, "classify",
                             "--model", "lenet_bn", str(ROOT / "examples" / "9-ankle-boot.png")],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert client.returncode == 0 and "Ankle boot" in client.stdout, client.stderr
    for protocol, target in (("cnnserve", server.target), ("kserve-http", server.http_target)):
        run = subprocess.run([sys.executable, "-m", "server.loadtest", "--target", target, "--protocol", protocol,
                              "--model", "lenet_bn", "--concurrency", "2", "--duration", "1", "--warmup", "0.3",
                              "--processes", "1", *flags], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert run.returncode == 0, run.stdout + run.stderr
    refused = subprocess.run([sys.executable, "-m", "server.client", "--target", server.target, *flags[:6], "models"],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr


def http_status(url: str, token: str | None = None, context=None) -> int:
    import urllib.error
    import urllib.request
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10, context=context) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def kserve_ready(target: str, security: ClientSecurity | None, token: str | None = None) -> grpc.StatusCode:
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    with connect(target, security=security) as channel:
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        try:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerReady(service_pb2.ServerReadyRequest(),
                                                                           timeout=10, metadata=metadata)
            return grpc.StatusCode.OK
        except grpc.RpcError as error:
            return error.code()


def test_health_is_open_on_every_protocol_and_the_metrics_port_stays_on_loopback(server, pki):
    """The default policy with TLS and a token: the probes of all three protocols answer without the token (so a
    Kubernetes probe works whichever it uses), the explorer page too; models need it; metrics listen on loopback."""
    import ssl
    full = ClientSecurity(tls_ca=pki / "ca.pem", tls_cert=pki / "client.pem", tls_key=pki / "client.key")
    assert kserve_ready(server.target, full) == grpc.StatusCode.OK
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    context.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    base = f"https://{server.http_target}"
    assert http_status(f"{base}/v2/health/ready", context=context) == 200
    assert http_status(f"{base}/", context=context) == 200
    assert http_status(f"{base}/v2/models/lenet_bn", context=context) == 401
    assert http_status(f"{base}/v2/models/lenet_bn", TOKEN, context=context) == 200


def test_auth_open_none_closes_every_probe_and_page_on_every_protocol(committed_repository, pki, tmp_path):
    token_only = ClientSecurity(token_file=pki / "token")
    process = SpawnedServer(committed_repository, ["--models", "lenet_bn", "--auth-token-file", str(pki / "token"),
                                                 "--auth-open", "none", "--host", "0.0.0.0"],
                            with_http=True, with_metrics=True, security=token_only, log_path=tmp_path / "s.log")
    try:
        with connect(process.target) as channel:
            with pytest.raises(grpc.RpcError) as error:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert kserve_ready(process.target, None) == grpc.StatusCode.UNAUTHENTICATED
        assert kserve_ready(process.target, None, TOKEN) == grpc.StatusCode.OK
        for path in ("/v2/health/ready", "/v2/health/live", "/", "/examples/", "/explorer/main.js"):
            assert http_status(f"http://{process.http_target}{path}") == 401, path
            assert http_status(f"http://{process.http_target}{path}", TOKEN) == 200, path
        assert f"metrics on http://127.0.0.1:{process.metrics_port}/metrics" in process.log()
        assert "cnnserve_requests" in process.metrics()
    finally:
        assert process.stop() == 0, process.log()
