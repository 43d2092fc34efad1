"""Command-line client for a cnnserve server.

    python -m server.client classify --model lenet_bn examples/*.png [--top-k 3] [--features all --save-features out/]
    python -m server.client models
    python -m server.client health
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.app import message_limits
from server.proto import classifier_pb2 as pb
from server.proto import classifier_pb2_grpc


def connect(target: str, max_message_mb: int = 64) -> grpc.Channel:
    """A channel with the same explicit message limits as the server."""
    return grpc.insecure_channel(target, options=message_limits(max_message_mb))


def encoded_image(path: Path) -> pb.Image:
    return pb.Image(encoded=path.read_bytes())


def raw_image(pixels: np.ndarray) -> pb.Image:
    """A uint8 28×28 array as a raw tensor image."""
    return pb.Image(tensor=pb.Tensor(shape=list(pixels.shape), dtype="uint8", data=pixels.astype(np.uint8).tobytes()))


def feature_array(feature: pb.FeatureMap) -> np.ndarray:
    return np.frombuffer(feature.data, dtype=np.dtype(feature.dtype).newbyteorder("<")).reshape(tuple(feature.shape))


def save_feature_grid(values: np.ndarray, name: str, title: str, path: Path) -> None:
    """Tile the channels of one feature map into a grid with a colormap (a vector becomes one row)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = values.astype(np.float32)
    if values.ndim == 1:
        fig, ax = plt.subplots(figsize=(min(2 + len(values) / 16, 16), 1.8))
        ax.imshow(values[None, :], aspect="auto", cmap="viridis")
        ax.set_yticks([])
        ax.set_xlabel("unit")
    else:
        channels, h, w = values.shape
        cols = math.ceil(math.sqrt(channels))
        rows = math.ceil(channels / cols)
        grid = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan, dtype=np.float32)
        for c in range(channels):
            r, k = divmod(c, cols)
            channel = values[c]
            span = channel.max() - channel.min()
            grid[r * (h + 1): r * (h + 1) + h, k * (w + 1): k * (w + 1) + w] = (channel - channel.min()) / (span or 1)
        fig, ax = plt.subplots(figsize=(8, 8 * grid.shape[0] / grid.shape[1] + 0.6))
        ax.imshow(grid, cmap="viridis", interpolation="nearest")
        ax.axis("off")
    ax.set_title(f"{name}  {'×'.join(map(str, values.shape))}\n{title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def classify(args) -> int:
    features = [] if not args.features else (["all"] if args.features == "all" else args.features.split(","))
    request = pb.ClassifyRequest(model=args.model, top_k=args.top_k, features=features,
                                 images=[encoded_image(Path(p)) for p in args.images],
                                 feature_encoding=pb.FEATURE_ENCODING_FLOAT16 if args.float16 else pb.FEATURE_ENCODING_FLOAT32)
    with connect(args.target, args.max_message_mb) as channel:
        response = classifier_pb2_grpc.ClassifierStub(channel).Classify(request, timeout=args.timeout)
    print(f"model {response.model} v{response.version}  (server: decode {response.timings.decode_ms:.2f} ms, "
          f"queue {response.timings.queue_ms:.2f} ms, compute {response.timings.compute_ms:.2f} ms, "
          f"batch {response.timings.batch_size})")
    print(f"{'image':<32} {'rank':>4} {'class':>5}  {'label':<12} {'probability':>11} {'logit':>8}")
    for path, result in zip(args.images, response.results):
        for rank, p in enumerate(result.predictions, 1):
            print(f"{path if rank == 1 else '':<32} {rank:>4} {p.class_index:>5}  {p.label:<12} {p.probability:>11.4f} {p.logit:>8.3f}")
        if args.save_features:
            out = Path(args.save_features)
            out.mkdir(parents=True, exist_ok=True)
            for feature in result.features:
                target = out / f"{Path(path).stem}_{feature.name}.png"
                save_feature_grid(feature_array(feature), feature.name, f"{response.model} on {Path(path).name}", target)
                print(f"  feature map {feature.name} {list(feature.shape)} -> {target}")
    return 0


def models(args) -> int:
    with connect(args.target, args.max_message_mb) as channel:
        response = classifier_pb2_grpc.ClassifierStub(channel).ListModels(pb.ListModelsRequest(), timeout=args.timeout)
    for m in response.models:
        if not m.ready:
            print(f"{m.name}: NOT SERVING ({m.reason})")
            continue
        accuracy = f"test acc {m.test_acc:.4f} ({m.recipe} recipe)" if m.trained else "untrained"
        print(f"{m.name} v{m.version}: {m.provider}, {accuracy}, max batch {m.max_batch_size}, sha256 {m.sha256[:12]}…")
        for f in m.features:
            print(f"    {f.name:<14} {'×'.join(map(str, f.shape))}")
    return 0


def health(args) -> int:
    with connect(args.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        status = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout).status
    print(f"{args.service or 'server'}: {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}")
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.client", description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="host:port of the server")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    parser.add_argument("--max-message-mb", type=int, default=64)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("classify", help="classify image files (PNG/JPEG)")
    p.add_argument("--model", required=True)
    p.add_argument("images", nargs="+")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--features", help="feature maps to fetch: name,name or all")
    p.add_argument("--float16", action="store_true", help="fetch feature maps as float16 (half the bytes)")
    p.add_argument("--save-features", metavar="DIR", help="write a PNG grid per feature map here")
    p.set_defaults(run=classify)
    commands.add_parser("models", help="list the loaded models").set_defaults(run=models)
    p = commands.add_parser("health", help="health status of the server or one model")
    p.add_argument("--service", default="", help="a model name, or empty for the whole server")
    p.set_defaults(run=health)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except grpc.RpcError as error:
        print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
