import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.checkpoint import latest_checkpoint, load_checkpoint
from models.recipes import make_config
from models.train import augment, main


def test_book_and_modern_recipes(data_dir):
    book = make_config("resnet18", "book")
    assert (book.lr, book.batch_size, book.side, book.init, book.momentum, book.mean) == (0.05, 256, 96, "xavier", 0.0, None)
    modern = make_config("lenet_bn", "modern", lr=0.5, seed=None)
    assert modern.lr == 0.5 and modern.seed == 0 and modern.momentum == 0.9 and modern.mean is not None


def test_augment_keeps_shape_and_pixels():
    config = make_config("lenet", "modern", shift=2)
    images = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    out = augment(images, config, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert not torch.equal(out, images)


# Run in a fresh interpreter: what malloc does by default depends on the heap's history (a free block left in the
# middle of the heap by an earlier test is reused instead of mapped), and a new process has none.
FAULT_COUNTS = """
import ctypes, json, resource
from models.train import freed_memory_kept_in_the_heap

def page_faults_of_a_64_mib_buffer():
    # Minor page faults taken by malloc-ing, filling and freeing 64 MiB (above glibc's mmap threshold).
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = libc.malloc(64 << 20)
    ctypes.memset(buffer, 1, 64 << 20)
    libc.free(buffer)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

counts = {"default": [page_faults_of_a_64_mib_buffer() for _ in range(2)]}
with freed_memory_kept_in_the_heap():
    page_faults_of_a_64_mib_buffer()
    counts["kept"] = page_faults_of_a_64_mib_buffer()
    with freed_memory_kept_in_the_heap():       # evaluate() inside train(): the outer one still holds after
        pass
    counts["kept after a nested use"] = page_faults_of_a_64_mib_buffer()
counts["default again"] = page_faults_of_a_64_mib_buffer()
print(json.dumps(counts))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_training_reuses_freed_memory_instead_of_faulting_in_fresh_pages():
    """A training step frees its activations and the next allocates them again: by default each large block is
    fresh pages from the kernel (16,384 faults for 64 MiB); inside the context a freed block is reused. Leaving
    the outermost use restores glibc's defaults."""
    out = subprocess.run([sys.executable, "-c", FAULT_COUNTS], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    counts = json.loads(out.stdout)
    assert min(counts["default"]) > 8_000 and counts["default again"] > 8_000, counts
    assert counts["kept"] < 1_000 and counts["kept after a nested use"] < 1_000, counts


@pytest.fixture(scope="module")
def lenet_bn_checkpoint(tmp_path_factory, fashion):
    """A lenet_bn trained for one epoch of the modern recipe on the CPU."""
    from models.train import run
    config = make_config("lenet_bn", "modern", epochs=1, device="cpu")
    return run(config, fashion, tmp_path_factory.mktemp("checkpoints"), progress=False)


@pytest.mark.slow
def test_lenet_bn_one_modern_epoch_on_the_cpu(lenet_bn_checkpoint):
    """The foundation's acceptance bar: one CPU epoch of the modern recipe reaches 0.80."""
    assert latest_checkpoint("lenet_bn", lenet_bn_checkpoint.parent.parent) == lenet_bn_checkpoint
    model, checkpoint = load_checkpoint(lenet_bn_checkpoint)
    assert checkpoint["metrics"]["test_acc"] >= 0.80
    assert checkpoint["config"]["arch"] == "lenet_bn" and checkpoint["config"]["recipe"] == "modern"
    assert not model.training
    metrics = json.loads(lenet_bn_checkpoint.with_suffix(".json").read_text())
    assert metrics["test_acc"] == checkpoint["metrics"]["test_acc"] and len(metrics["history"]) == 1
    assert lenet_bn_checkpoint.with_suffix(".png").stat().st_size > 10_000


def test_train_cli_refuses_an_unknown_arch(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--arch", "lenet5", "--epochs", "1"])
    assert exit_info.value.code == 2
    assert "unknown model 'lenet5'" in capsys.readouterr().err


def test_make_config_builds_no_model():
    """A recipe needs only the model's input side, registered beside its builder: VGG-11's 43M parameters are
    not built for it. Seen through PyTorch's global hook on every parameter any module registers."""
    from models import create_model
    from models.recipes import RECIPES
    registered = []
    hook = torch.nn.modules.module.register_module_parameter_registration_hook(
        lambda module, name, parameter: registered.append(name))
    try:
        create_model("lenet")
        assert registered, "the hook sees a model being built"
        registered.clear()
        for recipe in RECIPES:
            assert make_config("vgg11", recipe).side == 224
    finally:
        hook.remove()
    assert registered == []


def test_missing_weights_say_how_long_training_takes_on_the_cpu(tmp_path):
    """The estimate comes from the recorded speed; checked against the one CPU run it can be: AlexNet's shipped one."""
    from models.pretrained import WeightsError, get_weights
    from models.recipes import cpu_training_minutes
    with pytest.raises(WeightsError) as error:
        get_weights("vgg11", tmp_path)         # an empty weights directory: nothing shipped
    message = str(error.value)
    assert "--arch vgg11" in message and f"{make_config('vgg11', 'modern-cpu').epochs} epochs" in message
    assert f"about {cpu_training_minutes('vgg11'):.0f} min on a 2-core CPU" in message
    shipped = get_weights("alexnet")
    assert shipped.device.startswith("cpu") and shipped.recipe == "modern-cpu"
    assert cpu_training_minutes("alexnet") == pytest.approx(shipped.train_seconds / 60, rel=0.15)
