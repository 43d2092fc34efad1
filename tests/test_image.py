"""The serving image, built from the Dockerfile and run with podman as a user would: it serves the
default repository on all three protocols, as a non-root user, without torch, under its size budget,
and drains and exits 0 on SIGTERM. Minutes of work (the base image, then the build): slow."""
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from PIL import Image

from client.spawn import ROOT, free_port
from cnnserve.proto import classifier_pb2 as pb
from cnnserve.proto import classifier_pb2_grpc

pytestmark = pytest.mark.slow
BASE_SCRIPT = ROOT.parent / "shared" / "containers" / "make-base-image.sh"
IMAGE = "localhost/cnnserve:test"
MAX_IMAGE_MB = 600
EXAMPLE = ROOT / "examples" / "9-ankle-boot.png"


def run(*command: str, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """The image, built with buildah on a local stand-in for the official base image (nothing can be pulled here),
    from the files a clone of this commit holds: models built into this checkout's `model_repository/` on an
    earlier start are not part of what the repository ships."""
    assert BASE_SCRIPT.is_file(), f"{BASE_SCRIPT} is missing: the container recipe of the shared directory"
    base = run("bash", str(BASE_SCRIPT))
    assert base.returncode == 0, base.stderr[-2000:]
    context = tmp_path_factory.mktemp("image-context")
    listed = run("git", "ls-files", "-co", "--exclude-standard", "-z", cwd=ROOT).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, context / name)
    os.environ["CONTAINERS_CONF"] = "/etc/containers/cnnserve-test.conf"
    build = run("buildah", "bud", "--isolation", "chroot", "--network", "host", "--format", "docker", "--layers",
                "--build-arg", f"BASE={base.stdout.strip()}", "-t", IMAGE, str(context))
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return IMAGE


def test_the_image_is_slim_and_holds_no_torch(image):
    size = int(run("podman", "image", "inspect", "--format", "{{.Size}}", image).stdout.strip())
    print(f"image size: {size / 1e6:.0f} MB")
    assert size < MAX_IMAGE_MB * 1e6
    inspected = json.loads(run("podman", "image", "inspect", image).stdout)[0]
    config = inspected["Config"]
    assert config["User"] == "1000:1000" and config["Entrypoint"] == ["python", "-m", "server"]
    assert {"9000/tcp", "8080/tcp", "8002/tcp"} <= set(config["ExposedPorts"])
    assert "/v2/health/ready" in " ".join(inspected["Healthcheck"]["Test"])
    probe = run("podman", "run", "--rm", "--network", "host", "--entrypoint", "python", image, "-c",
                "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('onnxruntime') is not None)")
    assert probe.stdout.split() == ["None", "True"], probe.stdout + probe.stderr
    compilers = run("podman", "run", "--rm", "--entrypoint", "sh", image, "-c", "command -v gcc cc || echo none")
    assert compilers.stdout.strip() == "none"


def wait_ready(http_port: int, container: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    logs = run("podman", "logs", container)
    raise TimeoutError(f"{container} not ready after {timeout} s:\n{(logs.stdout + logs.stderr)[-3000:]}")


def test_the_container_classifies_on_every_protocol_and_exits_cleanly_on_sigterm(image):
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    name = f"cnnserve-test-{os.getpid()}"
    # Arguments after the image name go to the server (its environment gives the defaults).
    # Read-only root filesystem with a writable /tmp, as deploy/deployment.yaml runs it.
    started = run("podman", "run", "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
                  image, "--port", str(grpc_port),
                  "--http-port", str(http_port), "--metrics-port", str(metrics_port), "--models", "lenet_bn,densenet")
    assert started.returncode == 0, started.stderr
    try:
        wait_ready(http_port, name)
        pixels = np.asarray(Image.open(EXAMPLE).convert("L"))[None, None]
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            v1 = classifier_pb2_grpc.ClassifierStub(channel).Classify(
                pb.ClassifyRequest(model="lenet_bn", images=[pb.Image(encoded=EXAMPLE.read_bytes())]), timeout=30)
        assert v1.results[0].predictions[0].label == "Ankle boot"
        tensor = tgrpc.InferInput("image", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels)
        kserve_grpc = tgrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}").infer("densenet", [tensor])
        assert int(np.argmax(kserve_grpc.as_numpy("logits"))) == 9
        tensor = thttp.InferInput("image", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels, binary_data=True)
        kserve_http = thttp.InferenceServerClient(f"127.0.0.1:{http_port}").infer("lenet_bn", [tensor])
        assert int(np.argmax(kserve_http.as_numpy("logits"))) == 9
        assert run("podman", "exec", name, "id", "-u").stdout.strip() == "1000"
        assert "cnnserve_requests" in urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
        run("podman", "kill", "--signal", "TERM", name)
        code = run("podman", "wait", name, timeout=60).stdout.strip()
        logs = run("podman", "logs", name)
        assert code == "0", logs.stdout[-2000:] + logs.stderr[-2000:]
        assert "stopped" in logs.stdout + logs.stderr
    finally:
        run("podman", "rm", "-f", name)
