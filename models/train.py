"""Train a model on Fashion-MNIST: `python -m models.train --arch lenet_bn --recipe modern`.

The whole dataset sits on the device as uint8 tensors; each step indexes a batch, augments and
preprocesses it there, so no Python data pipeline limits the speed. On CUDA the step runs in
bf16 autocast with channels-last tensors.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from cnnserve.entry import DefaultsHelpFormatter, exit_if_missing, program_name

with exit_if_missing("train"):
    import torch
    from torch import nn
    from tqdm import tqdm

    from cnnserve.fashion_mnist import DataError, FashionMNIST, load_fashion_mnist
    from models.builders import TapNet, build_model, registered_names
    from models.checkpoint import save_checkpoint
    from models.data import batches, to_model_input
    from models.recipes import RECIPES, TrainConfig, make_config


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this PyTorch build sees no CUDA device; use --device cpu or auto")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """What trained it, for the weights registry: 'cuda (NVIDIA H200)' or 'cpu (2 threads)'."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'' if threads == 1 else 's'})"


def xavier_init(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.xavier_uniform_(module.weight)


def kaiming_init(module: nn.Module) -> None:
    """He init for ReLU nets: each layer keeps its input's variance (Xavier halves it after every ReLU,
    which deep plain ReLU nets such as NiN's twelve conv layers compound); zero biases."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)


INITS = {"xavier": xavier_init, "kaiming": kaiming_init}


_heap_kept_depth = 0      # freed_memory_kept_in_the_heap nests: glibc's defaults come back when the outermost ends


@contextmanager
def freed_memory_kept_in_the_heap() -> Iterator[None]:
    """While inside, glibc keeps freed memory for reuse instead of handing it back to the kernel.

    PyTorch's CPU allocator frees each activation back to malloc after the step that used it. glibc
    serves blocks above its mmap threshold (at most 32 MiB) with mmap and unmaps them on free, so
    every training step asks the kernel for hundreds of MiB of fresh pages again and the kernel
    zeroes each one: at 224 px much of the time goes to page faults, in system time. With mmap off
    and no trimming, the heap grows to one step's peak once and every later step reuses it
    (bench/cpu_train_speed.py measures both). When the outermost use ends, glibc's default limits come
    back (its mmap threshold no longer adapts to freed blocks) and the heap is trimmed. Does nothing where
    the C library is not glibc."""
    global _heap_kept_depth
    libc = ctypes.CDLL(None) if sys.platform.startswith("linux") else None
    mallopt, trim = (getattr(libc, "mallopt", None), getattr(libc, "malloc_trim", None)) if libc else (None, None)
    if mallopt is None or trim is None:
        yield
        return
    m_trim_threshold, m_mmap_max = -1, -4                  # <malloc.h>
    if _heap_kept_depth == 0:
        mallopt(m_mmap_max, 0)
        mallopt(m_trim_threshold, 2**31 - 1)
    _heap_kept_depth += 1
    try:
        yield
    finally:
        _heap_kept_depth -= 1
        if _heap_kept_depth == 0:
            mallopt(m_mmap_max, 65536)                     # glibc's default limits
            mallopt(m_trim_threshold, 128 * 1024)
            trim(0)


def augment(images: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and shifts of up to `config.shift` pixels, per image, on uint8 [N,1,H,W]."""
    n, _, h, w = images.shape
    if config.flip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
    if config.shift:
        s = config.shift
        padded = nn.functional.pad(images, (s, s, s, s))
        dy, dx = (torch.randint(0, 2 * s + 1, (2, n), generator=generator).to(images.device))
        rows = dy[:, None] + torch.arange(h, device=images.device)
        cols = dx[:, None] + torch.arange(w, device=images.device)
        images = padded[torch.arange(n, device=images.device)[:, None, None], 0,
                        rows[:, :, None], cols[:, None, :]].unsqueeze(1)
    return images


@torch.no_grad()
@freed_memory_kept_in_the_heap()
def evaluate(model: TapNet, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig,
             batch_size: int = 250, bf16: bool = False) -> float:
    """Test accuracy of `model` on uint8 images [N, 28, 28] already on the model's device, at `config.side`."""
    # Small batches: on this CPU larger ones score fewer images/s (docs/training.md, "Evaluation batch").
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=images.device)
    for x, y in batches(images, labels, batch_size, shuffle=False):
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
            p = config.preprocessing
            logits = model(to_model_input(x, p.side, p.mean, p.std))
        correct += (logits.argmax(1) == y).sum()
    return correct.item() / len(images)


def epoch_side(config: TrainConfig, epoch: int) -> int:
    """Progressive resizing: the first `low_res_epochs` epochs at `low_res_side`, then `side`."""
    return config.low_res_side if config.low_res_side and epoch <= config.low_res_epochs else config.side


def train(config: TrainConfig, data: FashionMNIST, *, progress: bool = True,
          model: TapNet | None = None) -> tuple[TapNet, dict]:
    """Train one model as `config` says; return it (eval mode, on its device) and its metrics.

    `model` replaces the registered `config.arch` (a variant under study, bench/nin_recipe.py)."""
    device = resolve_device(config.device)
    with freed_memory_kept_in_the_heap() if device.type == "cpu" else nullcontext():
        return train_on(device, config, data, progress, model)


def train_on(device: torch.device, config: TrainConfig, data: FashionMNIST, progress: bool,
             model: TapNet | None) -> tuple[TapNet, dict]:
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = build_model(config.arch) if model is None else model
    if config.init != "default":
        model.apply(INITS[config.init])
    if config.class_bias is not None:      # NiN's last conv: one channel per class (models/recipes.py)
        classes = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
        nn.init.constant_(classes.bias, config.class_bias)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda
    bf16 = cuda or config.cpu_bf16
    memory_format = torch.channels_last if cuda or config.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)

    train_x, train_y = (torch.from_numpy(a).to(device) for a in (data.train_images, data.train_labels))
    test_x, test_y = (torch.from_numpy(a).to(device) for a in (data.test_images, data.test_labels))
    train_y, test_y = train_y.long(), test_y.long()

    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov, weight_decay=config.weight_decay,
                                **({"fused": True} if cuda else {}))
    steps_per_epoch = math.ceil(len(train_x) / config.batch_size)
    if config.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, pct_start=0.2,
                                                        total_steps=config.epochs * steps_per_epoch)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    history = []
    wall_start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        start = time.perf_counter()
        bar = tqdm(batches(train_x, train_y, config.batch_size, shuffle=True, generator=generator),
                   total=steps_per_epoch, desc=f"{config.arch} epoch {epoch}/{config.epochs}",
                   leave=False, disable=not progress)
        side = epoch_side(config, epoch)
        for x, y in bar:
            x = to_model_input(augment(x, config, generator), side, config.mean, config.std)
            x = x.contiguous(memory_format=memory_format)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            loss = loss_fn(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
        seconds = time.perf_counter() - start
        record = {"epoch": epoch, "loss": loss_sum.item() / len(train_x),
                  "train_acc": correct.item() / len(train_x),
                  # low-resolution epochs are not evaluated: the test set is scored at the final side
                  "test_acc": evaluate(model, test_x, test_y, config, bf16=bf16) if side == config.side else None,
                  "side": side, "seconds": seconds, "images_per_s": len(train_x) / seconds}
        history.append(record)
        print(f"{config.arch} epoch {epoch:2d}: loss {record['loss']:.4f}  train acc {record['train_acc']:.4f}  "
              f"test acc {record['test_acc'] or float('nan'):.4f}  side {side}  "
              f"{record['images_per_s']:,.0f} img/s  ({seconds:.1f} s)",
              flush=True)
        if not math.isfinite(record["loss"]):
            print(f"{config.arch}: training diverged (loss {record['loss']}); stopping", file=sys.stderr)
            break
    # The recorded accuracy is fp32, as the exported ONNX model computes it.
    test_acc = evaluate(model, test_x, test_y, config) if bf16 else history[-1]["test_acc"]
    metrics = {"test_acc": test_acc, "train_seconds": sum(r["seconds"] for r in history),
               "wall_seconds": time.perf_counter() - wall_start, "device": device_name(device),
               "history": history}
    return model.eval(), metrics


def plot_curves(history: list[dict], title: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["loss"] for r in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss")
    ax_acc.plot(epochs, [r["train_acc"] for r in history], marker="o", label="train")
    scored = [r for r in history if r["test_acc"] is not None]
    ax_acc.plot([r["epoch"] for r in scored], [r["test_acc"] for r in scored], marker="o", label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy")
    ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(config: TrainConfig, data: FashionMNIST, out_dir: Path, progress: bool = True) -> Path:
    """Train, then write the checkpoint, its metrics JSON and its training-curve PNG; return the checkpoint path."""
    model, metrics = train(config, data, progress=progress)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    stem = out_dir / config.arch / f"{config.recipe}-seed{config.seed}-{stamp}"
    save_checkpoint(stem.with_suffix(".pt"), model, config, metrics)
    stem.with_suffix(".json").write_text(json.dumps({"config": asdict(config), **metrics}, indent=2))
    plot_curves(metrics["history"], f"{config.arch} ({config.recipe} recipe, seed {config.seed}): "
                f"test acc {metrics['test_acc']:.4f}", stem.with_suffix(".png"))
    print(f"{config.arch}: test acc {metrics['test_acc']:.4f} in {metrics['train_seconds']:.0f} s -> {stem}.pt")
    return stem.with_suffix(".pt")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=program_name(), description=__doc__.splitlines()[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--arch", required=True,
                        help=f"one or more (comma-separated) of {', '.join(registered_names())}, or 'all'")
    parser.add_argument("--recipe", choices=RECIPES, default="modern")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--data-dir", help="Fashion-MNIST directory (default: $FASHION_MNIST_DIR, else data/fashion-mnist)")
    parser.add_argument("--out", type=Path, default=Path("checkpoints"))
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    args = parser.parse_args(argv)

    archs = registered_names() if args.arch == "all" else args.arch.split(",")
    try:
        configs = [make_config(arch, args.recipe, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                               seed=args.seed, device=args.device) for arch in archs]
        data = load_fashion_mnist(args.data_dir)
    except (ValueError, DataError) as error:
        parser.exit(2, f"error: {error}\n")
    for config in configs:
        run(config, data, args.out, progress=not args.no_progress)


if __name__ == "__main__":
    main()
