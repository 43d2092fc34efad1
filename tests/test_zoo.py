"""The trained zoo: shipped weights load, match their sha256 and reproduce their recorded accuracy
(a subset here; all 10,000 test images through the server in tests/test_zoo_served.py); int8-per-channel storage round-trips
into the exported ONNX exactly; what is committed fits the size budget; `python -m export.onnx
--arch resnet18` (and each model that ships as weights only) works on a fresh copy of the project;
untrained exports never pass for trained ones."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from safetensors.torch import load_file

from client.spawn import ROOT
from cnnserve.repository import load_version
from cnnserve.spec import sha256_file
from export.onnx import export
from models import create_model, list_models
from models.checkpoint import save_checkpoint
from models.pretrained import (
    INT8_PER_CHANNEL,
    SCALE_SUFFIX,
    WEIGHTS_DIR,
    WEIGHTS_NAME,
    WeightsError,
    get_weights,
    load_state_dict,
    publish,
)
from models.recipes import BOOK_PRINTED, TrainConfig
from models.train import evaluate

SHIPPED = list_models(trained=True)
MB = 1e6
BUDGET_MB, MAX_FILE_MB = 160, 50     # issue 26: every committed binary file together, and any one of them
DEFAULT_FILES = ("config.pbtxt", "labels.txt", "1/model.onnx", "1/metadata.json")


def committed_files() -> list[str]:
    """What a commit of this checkout holds: tracked files, and new ones that are not ignored."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return [name for name in listed if name and (ROOT / name).is_file()]


def is_binary(path) -> bool:
    """Not text: a NUL byte, or not UTF-8 (git's own test, a NUL in the first 8000 bytes, misses ONNX files)."""
    data = path.read_bytes()
    try:
        data.decode()
    except UnicodeDecodeError:
        return True
    return b"\0" in data


def git_ignores(path: str) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0


COMMITTED_MODELS = {name.split("/")[1] for name in committed_files() if name.startswith("model_repository/")}
BUILT_ON_START = [arch for arch in SHIPPED if arch not in COMMITTED_MODELS]   # shipped as weights only


def test_the_zoo_ships_its_trained_models_within_the_size_budget():
    assert {"lenet", "lenet_bn", "resnet18", "densenet"} <= set(SHIPPED)
    binaries = {name: (ROOT / name).stat().st_size for name in committed_files() if is_binary(ROOT / name)}
    weights = {f"models/weights/{get_weights(arch).file}" for arch in SHIPPED}
    models = {f"model_repository/{arch}/1/model.onnx" for arch in COMMITTED_MODELS}
    assert weights | models <= set(binaries), "every weights file and committed model.onnx is counted"
    listing = ", ".join(f"{name} {size / MB:.1f}" for name, size in sorted(binaries.items(), key=lambda i: -i[1])[:12])
    assert sum(binaries.values()) <= BUDGET_MB * MB, f"{sum(binaries.values()) / MB:.1f} MB committed: {listing}"
    assert max(binaries.values()) <= MAX_FILE_MB * MB, listing


def test_each_shipped_model_is_committed_whole_or_built_on_first_start():
    """A model of the default repository is either committed whole, or (its ONNX too large) built from its
    shipped weights on the server's first start into git-ignored paths: building never changes a committed file."""
    committed = set(committed_files())
    for arch in SHIPPED:
        paths = [f"model_repository/{arch}/{name}" for name in DEFAULT_FILES]
        if arch in COMMITTED_MODELS:
            assert set(paths) <= committed, arch
        else:
            assert all(git_ignores(path) for path in paths), f"{arch}'s built files must be git-ignored"


@pytest.mark.slow     # builds the models shipped as weights only, as the first start does
def test_the_default_repository_serves_exactly_the_shipped_weights(shipped_repository):
    assert sorted(p.name for p in shipped_repository.iterdir()) == sorted(SHIPPED)
    for arch in SHIPPED:
        metadata = load_version(shipped_repository / arch, 1).metadata     # raises on a sha256 mismatch
        assert metadata.trained and metadata.parity["passed"]
        assert metadata.checkpoint["sha256"] == get_weights(arch).sha256
        assert metadata.test_acc == get_weights(arch).test_acc_stored


@pytest.mark.parametrize("arch", SHIPPED)
def test_shipped_weights_load_and_reproduce_their_accuracy_on_a_subset(arch, fashion):
    weights = get_weights(arch)
    model = create_model(arch, weights="fashion-mnist")       # checks the sha256
    assert not model.training and weights.params == sum(p.numel() for p in model.parameters())
    assert weights.dtype in ("float16", "float32", INT8_PER_CHANNEL) and weights.recipe.startswith("modern")
    assert weights.test_acc_stored >= BOOK_PRINTED[arch][2], "at least the book's best printed build"
    assert abs(weights.test_acc_stored - weights.test_acc) <= 0.001, "the storage round trip costs at most 0.1 point"
    # A subset the CPU scores in about a second: 1,000 images at 28 px, 100 at 96, 50 at 224. Its binomial noise
    # at 90 % is σ = sqrt(0.09 / n), so the bar is 4σ below the full-set accuracy: far above chance (0.1), which
    # is what damaged weights or preprocessing score; tests/test_zoo_served.py (slow) scores all 10,000.
    n = {28: 1000, 96: 100}.get(model.input_side, 50)
    images, labels = torch.from_numpy(fashion.test_images[:n]), torch.from_numpy(fashion.test_labels[:n]).long()
    assert evaluate(model, images, labels, TrainConfig(**weights.config)) >= weights.test_acc_stored - 4 * (0.09 / n) ** 0.5


def test_a_damaged_weights_file_is_refused(tmp_path):
    shutil.copy(WEIGHTS_DIR / "lenet_bn.safetensors", tmp_path / "lenet_bn.safetensors")
    entries = json.loads((WEIGHTS_DIR / "index.json").read_text())
    (tmp_path / "index.json").write_text(json.dumps([e for e in entries if e["arch"] == "lenet_bn"]))   # nin: none
    data = bytearray((tmp_path / "lenet_bn.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "lenet_bn.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        load_state_dict(get_weights("lenet_bn", tmp_path), tmp_path)
    with pytest.raises(ValueError, match="unknown weights"):
        create_model("lenet_bn", weights="imagenet")
    with pytest.raises(WeightsError, match="no shipped"):
        get_weights("nin", tmp_path)


@pytest.fixture(scope="module")
def int8_lenet(tmp_path_factory, data_dir):
    """The shipped lenet published again, as int8-per-channel, into a weights directory of its own:
    (its registry entry, that directory, the float32 weights it was made from)."""
    tmp = tmp_path_factory.mktemp("int8")
    shipped = get_weights("lenet")
    model = create_model("lenet", weights=WEIGHTS_NAME)
    save_checkpoint(tmp / "lenet.pt", model, TrainConfig(**shipped.config),
                    {"test_acc": shipped.test_acc_stored, "train_seconds": shipped.train_seconds,
                     "wall_seconds": shipped.wall_seconds, "device": shipped.device, "history": [{}] * shipped.epochs})
    weights = publish(tmp / "lenet.pt", INT8_PER_CHANNEL, tmp / "weights", str(data_dir))
    return weights, tmp / "weights", model.state_dict()


def test_int8_per_channel_storage_quantizes_each_output_channel_and_loads_back_exactly(int8_lenet, tmp_path):
    weights, weights_dir, original = int8_lenet
    assert weights.dtype == INT8_PER_CHANNEL and weights.sha256 == sha256_file(weights_dir / weights.file)
    assert weights.size_bytes < 0.6 * get_weights("lenet").size_bytes          # int8 beside fp16: about half
    assert abs(weights.test_acc_stored - weights.test_acc) <= 0.002            # measured: 0.8823 -> 0.8815
    stored = load_file(weights_dir / weights.file)
    loaded = load_state_dict(weights, weights_dir)
    assert loaded.keys() == original.keys() and all(t.dtype == torch.float32 for t in loaded.values())
    for name, w in original.items():
        if w.dim() >= 2:      # every Linear and Conv weight: int8, one float32 scale per output channel
            q, scale = stored[name], stored[name + SCALE_SUFFIX]
            assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (w.shape[0],)
            peak = w.abs().flatten(1).amax(dim=1)
            assert torch.equal(scale, peak / 127)                             # max |w| of the channel -> 127
            assert torch.equal(q.flatten(1).abs().amax(dim=1), torch.full_like(peak, 127, dtype=torch.int8))
            assert torch.equal(loaded[name], q.float() * scale.view(-1, *[1] * (w.dim() - 1)))
            assert ((loaded[name] - w).abs() <= scale.view(-1, *[1] * (w.dim() - 1)) / 2 * 1.0001).all()
        else:                 # biases: float16, which the shipped fp16 values are exactly
            assert stored[name].dtype == torch.float16 and torch.equal(loaded[name], w)
    damaged = bytearray((weights_dir / weights.file).read_bytes())
    damaged[-1] ^= 0xFF
    (tmp_path / weights.file).write_bytes(bytes(damaged))
    with pytest.raises(WeightsError, match="sha256"):
        load_state_dict(weights, tmp_path)


def onnx_weights(path) -> dict[str, np.ndarray]:
    """The exported graph's weights by state-dict name, as float32 (an initializer stored as exact fp16
    beside a Cast, by `store_exact_fp16`, is read back through it)."""
    weights = {}
    for initializer in onnx.load(str(path)).graph.initializer:
        name = initializer.name.removeprefix("model.").removesuffix(".fp16")
        weights[name] = numpy_helper.to_array(initializer).astype(np.float32)
    return weights


def test_int8_weights_export_to_onnx_holding_exactly_the_dequantized_values(int8_lenet, tmp_path, data_dir):
    weights, weights_dir, _ = int8_lenet
    loaded = load_state_dict(weights, weights_dir)
    model = create_model("lenet")
    model.load_state_dict(loaded)
    save_checkpoint(tmp_path / "int8.pt", model, TrainConfig(**weights.config), {"test_acc": weights.test_acc_stored})
    version = export("lenet", tmp_path / "repository", checkpoint=str(tmp_path / "int8.pt"), data_dir=str(data_dir))
    exported = onnx_weights(version / "model.onnx")                 # after parity with PyTorch in ONNX Runtime
    assert exported.keys() == {name for name, t in loaded.items() if t.is_floating_point()}
    for name, array in exported.items():
        assert np.array_equal(array, loaded[name].numpy()), name


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory):
    """The project's files as a fresh clone has them (tracked, or new and not ignored): no checkpoints."""
    copy = tmp_path_factory.mktemp("fresh") / "cnnserve"
    for name in committed_files():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    return copy


def run_module(cwd, data_dir, *args):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "FASHION_MNIST_DIR": str(data_dir)})


def tree_digest(directory) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("arch", dict.fromkeys(["resnet18", *BUILT_ON_START]))   # the README's example first, each once
def test_export_with_no_flags_exports_the_shipped_weights(fresh_copy, data_dir, arch):
    assert not (fresh_copy / "checkpoints").exists()
    shipped = tree_digest(fresh_copy / "model_repository")
    result = run_module(fresh_copy, data_dir, "export.onnx", "--arch", arch)
    assert result.returncode == 0, result.stderr[-2000:]
    assert tree_digest(fresh_copy / "model_repository") == shipped, "the README's export leaves the shipped repository"
    weights = get_weights(arch)
    assert "parity ok" in result.stdout and f"models/weights/{weights.file}" in result.stdout
    model = load_version(fresh_copy / "exports" / "trained" / arch)
    assert model.version == 1 and model.metadata.trained
    assert model.metadata.checkpoint["sha256"] == sha256_file(WEIGHTS_DIR / weights.file) == weights.sha256
    exported = onnx_weights(model.model_path)
    assert all(np.array_equal(exported[name], t.numpy()) for name, t in load_state_dict(weights).items()
               if t.is_floating_point()), "the export holds the shipped weights exactly"


@pytest.mark.slow
def test_random_init_exports_never_land_beside_trained_versions(fresh_copy, data_dir):
    repository = fresh_copy / "model_repository"
    before = tree_digest(repository)
    result = run_module(fresh_copy, data_dir, "export.onnx", "--arch", "all", "--random-init")
    assert result.returncode == 0, result.stderr[-2000:]
    assert tree_digest(repository) == before
    for arch in list_models():
        assert load_version(fresh_copy / "exports" / "untrained" / arch, 1).metadata.trained is False
    refused = run_module(fresh_copy, data_dir, "export.onnx", "--arch", "lenet_bn", "--random-init",
                         "--out", "model_repository")
    assert refused.returncode == 1 and "--force" in refused.stderr and "Traceback" not in refused.stderr
    assert tree_digest(repository) == before
    evaluated = run_module(fresh_copy, data_dir, "export.evaluate", "exports/untrained/lenet_bn")
    assert evaluated.returncode == 1 and "UNTRAINED" in evaluated.stderr
