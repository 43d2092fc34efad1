"""Command-line client for a cnnserve server.

    cnnserve client classify --model lenet_bn examples/*.png [--top-k 3] [--version N] [--json]
        [--features all] [--save-features DIR (PNG grids)] [--save-raw DIR (.npy arrays)]
    cnnserve client models
    cnnserve client health

`python -m client.cli` and `python -m server.client` run the same.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from cnnserve.entry import DefaultsHelpFormatter, exit_if_missing, program_name, quiet_when_stdout_closes

with exit_if_missing("client"):
    import grpc
    import numpy as np
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from client.channel import DEFAULT_MAX_MESSAGE_MB, add_security_flags, connect, security_from
    from cnnserve.proto import classifier_pb2 as pb
    from cnnserve.proto import classifier_pb2_grpc

__all__ = ["connect", "encoded_image", "raw_image", "feature_array", "main"]


class UsageError(Exception):
    """A mistake on the command line: printed as one line, exit status 2."""


def encoded_image(path: Path) -> pb.Image:
    if not path.exists():
        raise UsageError(f"image {path}: no such file")
    if not path.is_file():
        raise UsageError(f"image {path}: not a file (a directory? pass the image files, e.g. {path}/*.png)")
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
    request = pb.ClassifyRequest(model=args.model, version=args.version, top_k=args.top_k, features=features,
                                 images=[encoded_image(Path(p)) for p in args.images],
                                 feature_encoding=pb.FEATURE_ENCODING_FLOAT16 if args.float16 else pb.FEATURE_ENCODING_FLOAT32)
    security = security_from(args)
    with connect(args.target, args.max_message_mb, security) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        response = stub.Classify(request, timeout=args.timeout, metadata=security.metadata())
        info = stub.GetModel(pb.GetModelRequest(name=response.model), timeout=args.timeout, metadata=security.metadata())
    if args.json:
        print(json.dumps(classify_json(args.images, response, info), indent=2))
    else:
        print_predictions(args.images, response, info)
    for path, result in zip(args.images, response.results):
        for feature in result.features:
            if args.save_raw:
                target = Path(args.save_raw) / f"{Path(path).stem}_{feature.name}.npy"
                target.parent.mkdir(parents=True, exist_ok=True)
                np.save(target, feature_array(feature))
                print(f"  feature map {feature.name} {list(feature.shape)} -> {target}", file=sys.stderr)
            if args.save_features:
                target = Path(args.save_features) / f"{Path(path).stem}_{feature.name}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                save_feature_grid(feature_array(feature), feature.name, f"{response.model} on {Path(path).name}", target)
                print(f"  feature map {feature.name} {list(feature.shape)} -> {target}", file=sys.stderr)
    return 0


def classify_json(paths: list[str], response: pb.ClassifyResponse, info: pb.ModelInfo) -> dict:
    return {"model": response.model, "version": response.version, "trained": info.trained,
            "timings": {"decode_ms": response.timings.decode_ms, "queue_ms": response.timings.queue_ms,
                        "compute_ms": response.timings.compute_ms, "batch_size": response.timings.batch_size},
            "results": [{"image": path, "predictions": [
                {"class_index": p.class_index, "label": p.label, "probability": p.probability, "logit": p.logit}
                for p in result.predictions],
                "features": [{"name": f.name, "shape": list(f.shape), "dtype": f.dtype} for f in result.features]}
                for path, result in zip(paths, response.results)]}


def print_predictions(paths: list[str], response: pb.ClassifyResponse, info: pb.ModelInfo) -> None:
    untrained = "  UNTRAINED (random weights: these answers are chance)" if not info.trained else ""
    print(f"model {response.model} v{response.version}{untrained}  (server: decode {response.timings.decode_ms:.2f} ms, "
          f"queue {response.timings.queue_ms:.2f} ms, compute {response.timings.compute_ms:.2f} ms, "
          f"batch {response.timings.batch_size})")
    print(f"{'image':<32} {'rank':>4} {'class':>5}  {'label':<12} {'probability':>11} {'logit':>8}")
    for path, result in zip(paths, response.results):
        for rank, p in enumerate(result.predictions, 1):
            print(f"{path if rank == 1 else '':<32} {rank:>4} {p.class_index:>5}  {p.label:<12} "
                  f"{p.probability:>11.4f} {p.logit:>8.3f}")


def models(args) -> int:
    security = security_from(args)
    with connect(args.target, args.max_message_mb, security) as channel:
        response = classifier_pb2_grpc.ClassifierStub(channel).ListModels(pb.ListModelsRequest(), timeout=args.timeout,
                                                                          metadata=security.metadata())
    for m in response.models:
        if not m.ready:
            print(f"{m.name}: NOT SERVING ({m.reason})")
            continue
        accuracy = f"test acc {m.test_acc:.4f} ({m.recipe} recipe)" if m.trained else "untrained"
        others = f" (serving versions {', '.join(map(str, m.versions))})" if len(m.versions) > 1 else ""
        print(f"{m.name} v{m.version}{others}: {m.provider}, {accuracy}, max batch {m.max_batch_size}, "
              f"sha256 {m.sha256[:12]}…")
        if m.reason:        # a version that failed to load beside the ones serving
            print(f"    {m.reason}")
        for f in m.features:
            print(f"    {f.name:<14} {'×'.join(map(str, f.shape))}")
    return 0


def health(args) -> int:
    security = security_from(args)
    with connect(args.target, security=security) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            status = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout,
                                metadata=security.metadata()).status
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:   # grpcio-health-checking sends no details
                raise UsageError(f"health: the server knows no service {args.service!r}; ask for '' (the server) "
                                 f"or a model name (see `models`)") from None
            raise
    print(f"{args.service or 'server'}: {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}")
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=program_name(), description=__doc__.splitlines()[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:50051", help="host:port of the server")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    parser.add_argument("--max-message-mb", type=int, default=DEFAULT_MAX_MESSAGE_MB,
                        help="gRPC message size limit, both ways (feature maps of many images are large)")
    add_security_flags(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("classify", help="classify image files (PNG/JPEG)", formatter_class=DefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="a model the server serves (see `models`)")
    p.add_argument("--version", type=int, default=0, help="model version; 0: the newest the server serves")
    p.add_argument("images", nargs="+", help="PNG or JPEG files, each classified as one Fashion-MNIST image")
    p.add_argument("--top-k", type=int, default=3, help="predictions per image")
    p.add_argument("--features", help="feature maps to fetch: name,name or all")
    p.add_argument("--float16", action="store_true", help="fetch feature maps as float16 (half the bytes)")
    p.add_argument("--save-features", metavar="DIR", help="write a PNG grid per feature map here")
    p.add_argument("--save-raw", metavar="DIR", help="write each feature map as a .npy array here")
    p.add_argument("--json", action="store_true", help="print the answer as JSON instead of a table")
    p.set_defaults(run=classify)
    commands.add_parser("models", help="list the loaded models", formatter_class=DefaultsHelpFormatter).set_defaults(run=models)
    p = commands.add_parser("health", help="health status of the server or one model", formatter_class=DefaultsHelpFormatter)
    p.add_argument("--service", default="", help="a model name, or empty for the whole server")
    p.set_defaults(run=health)
    return parser


# How the server names one image of a request in an INVALID_ARGUMENT detail: `images[3].encoded: not a PNG ...`.
IMAGE_FIELD = re.compile(r"images\[(\d+)\](?:\.encoded)?(?=:)")


def name_the_files(details: str, paths: list[str]) -> str:
    """The server's detail with each image it names by its place in the request (`images[3].encoded`) named
    by its file instead, as the user knows it. The server stays the one judge of what it accepts (formats,
    sizes, the decoded-pixel budget, damaged files); the client only translates where."""
    def file_name(match: re.Match) -> str:
        i = int(match[1])
        return paths[i] if i < len(paths) else match[0]
    return IMAGE_FIELD.sub(file_name, details)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with quiet_when_stdout_closes():
            return args.run(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except grpc.RpcError as error:
        details = error.details() or "(no details)"
        if args.command == "classify":
            details = name_the_files(details, args.images)
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            details += f" (is a server running at {args.target}?)"
        print(f"error: {error.code().name}: {details}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
