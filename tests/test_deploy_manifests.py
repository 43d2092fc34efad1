"""deploy/ validated without a cluster.

- The core objects (Deployment, Service, HorizontalPodAutoscaler, PodDisruptionBudget) against the
  Kubernetes schemas bundled by `kubernetes-validate`, strictly (an unknown field is an error), for the
  oldest and the newest Kubernetes it knows; the KServe resources against the `openAPIV3Schema` of
  KServe's CRDs in ../shared/kserve-crds/, made strict the same way (the API server prunes unknown
  fields silently, and `kubectl apply` only warns: a misspelt field would otherwise pass and do nothing).
- Their wiring: selectors, named ports, probes, grace period, security context, annotations.
- The contract: the server started exactly as a manifest's container says (its command, or the image's
  ENTRYPOINT `python -m server`; its arguments; its environment), a copy of the shipped lenet_bn standing
  in for the model repository the pod mounts, then asked what the cluster will ask: its probes' routes,
  its metrics where the annotations say, KServe v2 over HTTP and gRPC with tritonclient and with KServe's
  own Python SDK; then SIGTERM, and exit 0. The manifests' ports are fixed numbers (8080, 9000, 8002)
  that may be busy on a test machine, so only the port numbers are rewritten to free ones; everything else
  (flag names, host, paths other than the mounted repository) is used as written.

KServe's SDK (`kserve`) cannot share this project's environment: it needs protobuf < 7, and the pinned
grpcio-tools 1.85.1 that generated cnnserve/proto needs protobuf >= 7.35. So it runs in a venv of its own,
made once (about a minute and 450 MB) and reused: $CNNSERVE_KSERVE_PYTHON if set, else
~/.cache/cnnserve/kserve-sdk-<version>/ (cache that directory in CI).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import kubernetes_validate
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
import yaml
from PIL import Image

from client.spawn import free_port, terminate
from server.app import ServerConfig

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KSERVE_DIR = DEPLOY / "kserve"
KSERVE_CRDS = ROOT.parent / "shared" / "kserve-crds"     # beside the clone, as in CI
KSERVE_CRD_FILES = {"ClusterServingRuntime": "serving.kserve.io_clusterservingruntimes.yaml",
                    "ServingRuntime": "serving.kserve.io_servingruntimes.yaml",
                    "InferenceService": "serving.kserve.io_inferenceservices.yaml"}
KUBERNETES_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())   # the oldest and newest bundled
ENTRYPOINT = ["python", "-m", "server"]       # the image's (Dockerfile); `python` is this interpreter here
PORT_FLAGS = {"--port": "CNNSERVE_PORT", "--http-port": "CNNSERVE_HTTP_PORT", "--metrics-port": "CNNSERVE_METRICS_PORT"}
KSERVE_SDK_VERSION = "0.21.0"
EXAMPLES = sorted((ROOT / "examples").glob("[0-9]-*.png"))        # one test image per class: "<index>-<label>.png"


# ---- loading ----

def load_documents(path: Path) -> list[dict]:
    with open(path) as f:
        return [document for document in yaml.load_all(f, Loader=yaml.CSafeLoader) if document]


def load_one(path: Path) -> dict:
    documents = load_documents(path)
    assert len(documents) == 1, f"{path.relative_to(ROOT)}: expected one object, found {len(documents)}"
    return documents[0]


def kustomization_resources(directory: Path) -> list[Path]:
    kustomization = load_one(directory / "kustomization.yaml")
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and kustomization["kind"] == "Kustomization"
    return [directory / name for name in kustomization["resources"]]


def core_objects() -> dict[str, dict]:
    """deploy/'s objects as `kubectl apply -k deploy/` applies them, by kind."""
    objects = [document for path in kustomization_resources(DEPLOY) for document in load_documents(path)]
    by_kind = {document["kind"]: document for document in objects}
    assert len(by_kind) == len(objects), "one object of each kind expected"
    return by_kind


def runtime() -> dict:
    return load_one(KSERVE_DIR / "cluster-serving-runtime.yaml")


def inference_service() -> dict:
    return load_one(KSERVE_DIR / "inference-service.yaml")


def the_container(pod_spec: dict, name: str) -> dict:
    containers = {container["name"]: container for container in pod_spec["containers"]}
    assert name in containers, f"no container named {name!r}: {sorted(containers)}"
    return containers[name]


def flags(args: list[str]) -> dict[str, str]:
    """`--flag=value` and `--flag value` arguments as a dict (a bare `--flag` maps to "")."""
    found, i = {}, 0
    while i < len(args):
        arg = args[i]
        assert arg.startswith("--"), f"unexpected positional argument {arg!r}"
        if "=" in arg:
            name, value = arg.split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            name, value = arg, args[i + 1]
            i += 1
        else:
            name, value = arg, ""
        found[name] = value
        i += 1
    return found


def setting(container: dict, flag: str) -> str | None:
    """A server setting as the container gives it: its flag, else its CNNSERVE_ variable."""
    given = flags(container.get("args", []))
    if flag in given:
        return given[flag]
    variable = "CNNSERVE_" + flag.lstrip("-").replace("-", "_").upper()
    return next((e.get("value") for e in container.get("env", []) if e["name"] == variable), None)


# ---- schemas ----

def kserve_crd_path(kind: str) -> Path:
    path = KSERVE_CRDS / KSERVE_CRD_FILES[kind]
    if not path.is_file():
        pytest.fail(f"KServe's CRDs are missing: {path} not found. The tests expect the shared reference data "
                    f"beside the clone, at <clone>/../shared/kserve-crds/ (KServe's config/crd/full/, see its "
                    f"README.md); copy it there to run them.", pytrace=False)
    return path


@functools.cache
def kserve_schemas(kind: str) -> tuple[str, dict[str, dict]]:
    """(API group, {served version: its openAPIV3Schema, made strict}) of a KServe CRD."""
    crd = load_one(kserve_crd_path(kind))
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == kind
    return crd["spec"]["group"], {version["name"]: strict(version["schema"]["openAPIV3Schema"])
                                  for version in crd["spec"]["versions"] if version.get("served")}


def strict(schema):
    """The schema with unknown fields refused: `additionalProperties: false` on every object that lists
    its properties, unless it keeps unknown fields (x-kubernetes-preserve-unknown-fields)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) if key != "properties" else {name: strict(sub) for name, sub in value.items()}
              for key, value in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        result["additionalProperties"] = False
    return result


def validate_kserve(document: dict) -> None:
    """Raises jsonschema.ValidationError (or AssertionError) where the API server would refuse it."""
    group, schemas = kserve_schemas(document["kind"])
    api_group, _, version = document["apiVersion"].partition("/")
    assert api_group == group and version in schemas, f"{document['apiVersion']} is not served for {document['kind']}"
    jsonschema.Draft7Validator(schemas[version]).validate(document)
    name = document["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", name), f"{name!r} is not a DNS-1035 label"


# ---- validation ----

def test_kustomizations_list_every_manifest_and_keep_kserve_apart():
    plain = sorted(path.name for path in DEPLOY.glob("*.yaml") if path.name != "kustomization.yaml")
    assert sorted(path.name for path in kustomization_resources(DEPLOY)) == plain
    assert all(path.parent == DEPLOY for path in kustomization_resources(DEPLOY))   # nothing of deploy/kserve/
    assert {path.name for path in kustomization_resources(KSERVE_DIR)} == {"cluster-serving-runtime.yaml"}
    assert set(core_objects()) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_objects_validate_against_the_kubernetes_schemas(version):
    for kind, document in core_objects().items():
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{kind} is invalid for Kubernetes {version}: {'.'.join(map(str, error.path))}: {error.message}")


def test_kserve_resources_validate_against_the_crds():
    for document in (runtime(), inference_service()):
        try:
            validate_kserve(document)
        except jsonschema.ValidationError as error:
            pytest.fail(f"{document['kind']} is invalid: {'.'.join(map(str, error.path))}: {error.message}")


@pytest.mark.parametrize("mutation", ["unknown field", "wrong type"])
def test_the_validation_catches_mistakes(mutation):
    """The checks above are not vacuous: a misspelt field and a wrong type, at any depth, are refused."""
    deployment, serving_runtime, isvc = copy.deepcopy(core_objects()["Deployment"]), runtime(), inference_service()
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    kserve_container = serving_runtime["spec"]["containers"][0]
    model = isvc["spec"]["predictor"]["model"]
    if mutation == "unknown field":
        container["readinesProbe"] = container.pop("readinessProbe")
        serving_runtime["spec"]["suportedModelFormats"] = serving_runtime["spec"].pop("supportedModelFormats")
        model["storageURI"] = model.pop("storageUri")
    else:
        container["ports"][0]["containerPort"] = "9000"
        kserve_container["args"] = "--port=9000"
        model["modelFormat"]["version"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
    for document in (serving_runtime, isvc):
        with pytest.raises(jsonschema.ValidationError):
            validate_kserve(document)


# ---- wiring ----

def test_deployment_service_autoscaler_and_budget_fit_together():
    objects = core_objects()
    deployment, service = objects["Deployment"], objects["Service"]
    hpa, pdb = objects["HorizontalPodAutoscaler"], objects["PodDisruptionBudget"]
    template = deployment["spec"]["template"]
    pod_labels = template["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    container = the_container(template["spec"], "cnnserve")
    assert container["image"] == "localhost/cnnserve:latest"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"grpc": int(setting(container, "--port")), "http": int(setting(container, "--http-port")),
                     "metrics": int(setting(container, "--metrics-port"))} == {"grpc": 9000, "http": 8080, "metrics": 8002}
    assert setting(container, "--host") == "0.0.0.0" and setting(container, "--metrics-host") == "0.0.0.0"
    assert setting(container, "--model-repository") == "/models"
    service_ports = {port["name"]: port for port in service["spec"]["ports"]}
    assert {name: (port["port"], port["targetPort"]) for name, port in service_ports.items()} == \
        {"grpc": (9000, "grpc"), "http": (8080, "http"), "metrics": (8002, "metrics")}
    assert service_ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"

    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes == {"startupProbe": {"path": "/v2/health/ready", "port": "http"},
                      "readinessProbe": {"path": "/v2/health/ready", "port": "http"},
                      "livenessProbe": {"path": "/v2/health/live", "port": "http"}}
    grace = float(setting(container, "--grace") or ServerConfig.grace_s)
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    pause = float(re.search(r"sleep\((\d+(?:\.\d+)?)\)", pre_stop[-1]).group(1))
    assert template["spec"]["terminationGracePeriodSeconds"] > pause + grace + container["readinessProbe"]["periodSeconds"]

    annotations = template["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(ports["metrics"]),
                           "prometheus.io/path": "/metrics"}
    assert container["resources"]["requests"] == container["resources"]["limits"] == {"cpu": "2", "memory": "1Gi"}
    assert_locked_down(container, template["spec"])


def assert_locked_down(container: dict, pod_spec: dict) -> None:
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 1000
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]} and security["seccompProfile"] == {"type": "RuntimeDefault"}
    tmp = [mount for mount in container["volumeMounts"] if mount["mountPath"] == "/tmp"]
    volumes = {volume["name"]: volume for volume in pod_spec["volumes"]}
    assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]], "a writable /tmp on a read-only root"


def test_kserve_runtime_follows_kserves_conventions():
    """As KServe's Triton runtime: ONNX, v2 over HTTP and gRPC, one `kserve-container` serving /mnt/models
    with HTTP on 8080 and gRPC on 9000, metrics annotated; and the example InferenceService selects it."""
    document = runtime()
    assert document["metadata"]["name"] == "cnnserve"
    spec = document["spec"]
    assert spec["supportedModelFormats"] == [{"name": "onnx", "version": "1", "autoSelect": True}]
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    assert "serving.kserve.io/server-type" not in document["metadata"].get("annotations", {})
    assert len(spec["containers"]) == 1
    container = the_container(spec, "kserve-container")
    assert "command" not in container, "the image's ENTRYPOINT starts the server"
    assert setting(container, "--model-repository") == "/mnt/models"
    assert setting(container, "--host") == "0.0.0.0"
    assert (setting(container, "--http-port"), setting(container, "--port")) == ("8080", "9000")
    assert spec["annotations"] == {"prometheus.kserve.io/port": setting(container, "--metrics-port"),
                                   "prometheus.kserve.io/path": "/metrics"}
    assert setting(container, "--metrics-host") == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    assert_locked_down(container, spec)

    isvc = inference_service()["spec"]["predictor"]["model"]
    assert isvc["runtime"] == "cnnserve" and isvc["protocolVersion"] in spec["protocolVersions"]
    assert {"name": isvc["modelFormat"]["name"], "version": isvc["modelFormat"]["version"], "autoSelect": True} \
        in spec["supportedModelFormats"]
    assert re.fullmatch(r"(pvc|s3|gs|https?)://\S+", isvc["storageUri"])


# ---- the contract: the server as the manifests start it ----

@dataclass
class Started:
    """A server started from a container spec; `ports` maps the manifest's port numbers to the local ones."""
    process: subprocess.Popen
    container: dict
    ports: dict[int, int]
    log_path: Path
    args: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text()

    def local_port(self, port: int | str) -> int:
        if isinstance(port, str):       # a named port of the container
            named = {p["name"]: p["containerPort"] for p in self.container.get("ports", [])}
            assert port in named, f"port {port!r} is not one of the container's named ports {sorted(named)}"
            port = named[port]
        assert port in self.ports, f"port {port} is not one the server listens on ({sorted(self.ports)})"
        return self.ports[port]

    def url(self, port: int | str, path: str) -> str:
        return f"http://127.0.0.1:{self.local_port(port)}{path}"

    def stop(self, timeout: float = 30) -> int:
        return terminate(self.process, timeout)


def start_container(container: dict, mounts: dict[str, Path], log_path: Path) -> Started:
    """Start the server exactly as `container` says, from this checkout (the image's /app): its command (else
    the ENTRYPOINT) and arguments, its environment on top of this one; the paths under `mounts` replaced by
    local directories, and the port numbers by free ones. Does not wait."""
    def local_path(value: str) -> str:
        for mounted, local in mounts.items():
            if value == mounted or value.startswith(mounted + "/"):
                return str(local) + value[len(mounted):]
        return value

    ports: dict[int, int] = {}

    def local_port(value: str) -> str:
        assert value.isdigit(), f"port {value!r} is not a number"
        return str(ports.setdefault(int(value), free_port()))

    command = list(container.get("command") or ENTRYPOINT)
    if command[0] == "python":
        command[0] = sys.executable
    args, pending = [], None        # pending: how to rewrite the value that follows a `--flag`
    for arg in container.get("args", []):
        name, equals, value = arg.partition("=")
        rewrite = local_port if name in PORT_FLAGS else local_path
        if pending is not None and not arg.startswith("--"):
            arg, pending = pending(arg), None
        elif equals and name.startswith("--"):
            arg, pending = f"{name}={rewrite(value)}", None
        else:
            pending = rewrite if arg.startswith("--") else None
        args.append(arg)
    # This environment, less any CNNSERVE_ setting the pod would not have, plus the container's.
    environment = {name: value for name, value in os.environ.items() if not name.startswith("CNNSERVE_")}
    environment["PYTHONUNBUFFERED"] = "1"
    for variable in container.get("env", []):
        assert "value" in variable, f"env {variable['name']}: only literal values can be reproduced here"
        value = variable["value"]
        environment[variable["name"]] = local_port(value) if variable["name"] in PORT_FLAGS.values() else local_path(value)
    log = open(log_path, "w")
    process = subprocess.Popen([*command, *args], cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return Started(process, container, ports, log_path, args)


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def wait_ready(server: Started, timeout: float = 90) -> None:
    """Until GET /v2/health/ready on the container's HTTP port answers 200."""
    http_port = setting(server.container, "--http-port")
    assert http_port, "the container spec sets no --http-port (KServe v2 over HTTP; KServe expects 8080)"
    url = server.url(int(http_port), "/v2/health/ready")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"the server started as the manifest says exited with {server.process.returncode}:\n"
                        f"{' '.join(server.process.args)}\n{server.log()}", pytrace=False)
        if http_status(url) == 200:
            return
        time.sleep(0.1)
    pytest.fail(f"{url} not 200 after {timeout} s:\n{server.log()}", pytrace=False)


@pytest.fixture
def model_repository(tmp_path) -> Path:
    """A copy of the shipped lenet_bn, alone in a repository (the shipped one is never touched)."""
    repository = tmp_path / "models"
    shutil.copytree(ROOT / "model_repository" / "lenet_bn", repository / "lenet_bn")
    return repository


@pytest.fixture(scope="module")
def examples() -> tuple[np.ndarray, list[int]]:
    """The ten example images as one [10, 1, 28, 28] uint8 batch, with their classes."""
    images = np.stack([np.asarray(Image.open(path).convert("L")) for path in EXAMPLES])[:, None]
    return images, [int(path.name.split("-")[0]) for path in EXAMPLES]


def ask_what_the_cluster_asks(server: Started, container: dict, metrics: tuple[str, str]) -> None:
    """The probes' routes, on the ports they name, and the metrics where the annotations say."""
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        if kind in container:
            probe = container[kind]["httpGet"]
            assert http_status(server.url(probe["port"], probe["path"])) == 200, f"{kind} {probe} fails"
    port, path = metrics
    with urllib.request.urlopen(server.url(int(port), path), timeout=5) as response:
        assert response.status == 200 and "# TYPE" in response.read().decode()


def classify_with_tritonclient(server: Started, container: dict, examples) -> np.ndarray:
    """KServe v2 over HTTP and gRPC, with Triton's clients: the logits and the classification extension."""
    images, classes = examples
    labels = (ROOT / "model_repository" / "lenet_bn" / "labels.txt").read_text().split("\n")
    results = []
    for module, port in ((thttp, setting(container, "--http-port")), (tgrpc, setting(container, "--port"))):
        client = module.InferenceServerClient(f"127.0.0.1:{server.local_port(int(port))}")
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("lenet_bn")
        tensor = module.InferInput("image", list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images)
        logits = client.infer("lenet_bn", [tensor], outputs=[module.InferRequestedOutput("logits")]).as_numpy("logits")
        top = client.infer("lenet_bn", [tensor], outputs=[module.InferRequestedOutput("logits", class_count=1)])
        predicted = [entry[0].decode().split(":") for entry in top.as_numpy("logits")]
        assert [int(index) for _, index, _ in predicted] == list(logits.argmax(1))
        assert [label for _, index, label in predicted] == [labels[int(index)] for _, index, _ in predicted]
        client.close()
        results.append(logits)
    assert results[0].shape == (len(classes), 10)
    np.testing.assert_array_equal(results[0], results[1])
    assert (results[0].argmax(1) == classes).sum() >= 8, f"{results[0].argmax(1)} against {classes}"
    return results[0]


@contextlib.contextmanager
def running(container: dict, mounts: dict[str, Path], log_path: Path):
    """The server started from `container`, ready; on leaving, SIGTERM and exit 0 (a test that failed
    before only stops it)."""
    server = start_container(container, mounts, log_path)
    try:
        wait_ready(server)
        yield server
    except BaseException:
        server.stop()
        raise
    code = server.stop()
    assert code == 0, f"exit {code} after SIGTERM:\n{server.log()}"


def test_kserve_runtime_contract(model_repository, examples, tmp_path):
    """The ClusterServingRuntime's container, run as KServe would run it, answers tritonclient."""
    document = runtime()
    container = the_container(document["spec"], "kserve-container")
    with running(container, {"/mnt/models": model_repository}, tmp_path / "server.log") as server:
        metrics = (document["spec"]["annotations"]["prometheus.kserve.io/port"],
                   document["spec"]["annotations"]["prometheus.kserve.io/path"])
        ask_what_the_cluster_asks(server, container, metrics)
        classify_with_tritonclient(server, container, examples)


def test_deployment_contract(model_repository, examples, tmp_path):
    """The Deployment's container: its three probes, its Prometheus annotations, its named ports."""
    template = core_objects()["Deployment"]["spec"]["template"]
    container = the_container(template["spec"], "cnnserve")
    with running(container, {"/models": model_repository}, tmp_path / "server.log") as server:
        annotations = template["metadata"]["annotations"]
        ask_what_the_cluster_asks(server, container, (annotations["prometheus.io/port"], annotations["prometheus.io/path"]))
        classify_with_tritonclient(server, container, examples)


@pytest.mark.parametrize("mutation", ["misspelt flag", "no --http-port"])
def test_a_runtime_spec_the_server_does_not_follow_fails_the_contract(model_repository, tmp_path, mutation):
    original = the_container(runtime()["spec"], "kserve-container")
    container = copy.deepcopy(original)
    if mutation == "misspelt flag":
        container["args"] = [arg.replace("--metrics-host", "--metric-host") for arg in container["args"]]
    else:
        container["args"] = [arg for arg in container["args"] if not arg.startswith("--http-port")]
    assert container != original, "the mutation changed nothing: update it to the runtime's arguments"
    server = start_container(container, {"/mnt/models": model_repository}, tmp_path / "server.log")
    try:
        with pytest.raises((pytest.fail.Exception, AssertionError)) as failure:
            wait_ready(server, timeout=60)
        expected = "unrecognized arguments: --metric-host=0.0.0.0" if mutation == "misspelt flag" else "sets no --http-port"
        assert expected in str(failure.value)
    finally:
        server.stop()


# ---- KServe's own Python SDK, in a venv of its own ----

KSERVE_CLIENT = r"""
import asyncio, json, sys
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

async def main(base_url, grpc_target, model, images_path):
    images = np.load(images_path)

    def request(binary):
        tensor = InferInput(name="image", shape=list(images.shape), datatype="UINT8")
        tensor.set_data_from_numpy(images, binary_data=binary)
        return InferRequest(model_name=model, infer_inputs=[tensor])

    def logits(response):
        [output] = [o for o in response.outputs if o.name == "logits"]
        return output.as_numpy().astype("float32").tolist()

    results = {}
    rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=1, timeout=30))
    try:
        assert await rest.is_server_live(base_url) and await rest.is_server_ready(base_url)
        assert await rest.is_model_ready(base_url, model)
        results["rest-binary"] = logits(await rest.infer(base_url, request(True), model_name=model))
        results["rest-json"] = logits(await rest.infer(base_url, request(False), model_name=model))
    finally:
        await rest.close()
    grpc_client = InferenceGRPCClient(grpc_target, timeout=30)
    try:
        assert await grpc_client.is_server_live() and await grpc_client.is_server_ready()
        assert await grpc_client.is_model_ready(model)
        results["grpc-raw"] = logits(await grpc_client.infer(request(True)))
        results["grpc-contents"] = logits(await grpc_client.infer(request(False)))
    finally:
        await grpc_client.close()
    print(json.dumps(results))

asyncio.run(main(*sys.argv[1:]))
"""


def kserve_python() -> Path:
    """A Python with KServe's SDK: $CNNSERVE_KSERVE_PYTHON, else a venv made once under ~/.cache/cnnserve/."""
    given = os.environ.get("CNNSERVE_KSERVE_PYTHON")
    if given:
        assert Path(given).exists(), f"CNNSERVE_KSERVE_PYTHON={given} does not exist"
        return Path(given)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    venv = cache / "cnnserve" / f"kserve-sdk-{KSERVE_SDK_VERSION}"
    python, complete = venv / "bin" / "python", venv / ".complete"
    if not complete.exists():               # absent, or left half-made by an interrupted run
        shutil.rmtree(venv, ignore_errors=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        made = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                               f"kserve=={KSERVE_SDK_VERSION}"], capture_output=True, text=True, timeout=900)
        assert made.returncode == 0, f"installing kserve=={KSERVE_SDK_VERSION} into {venv} failed:\n{made.stderr[-3000:]}"
        complete.touch()
    return python


@pytest.mark.slow
def test_kserve_runtime_contract_with_kserves_sdk(model_repository, examples, tmp_path):
    """The ClusterServingRuntime's container answers KServe's own InferenceRESTClient and InferenceGRPCClient
    (binary and JSON tensors over HTTP, raw and typed contents over gRPC) with tritonclient's logits."""
    python = kserve_python()
    container = the_container(runtime()["spec"], "kserve-container")
    with running(container, {"/mnt/models": model_repository}, tmp_path / "server.log") as server:
        expected = classify_with_tritonclient(server, container, examples)
        np.save(tmp_path / "images.npy", examples[0])
        http = server.local_port(int(setting(container, "--http-port")))
        grpc = server.local_port(int(setting(container, "--port")))
        answered = subprocess.run([str(python), "-c", KSERVE_CLIENT, f"http://127.0.0.1:{http}", f"127.0.0.1:{grpc}",
                                   "lenet_bn", str(tmp_path / "images.npy")],
                                  capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert answered.returncode == 0, f"{answered.stderr[-4000:]}\n{server.log()}"
        results = json.loads(answered.stdout.strip().splitlines()[-1])
        assert sorted(results) == ["grpc-contents", "grpc-raw", "rest-binary", "rest-json"]
        for name, logits in results.items():
            np.testing.assert_array_equal(np.asarray(logits, dtype=np.float32), expected, err_msg=name)
