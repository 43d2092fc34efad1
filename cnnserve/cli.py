"""The `cnnserve` command: one entry point for every tool, each also runnable as `python -m ...`.

    cnnserve serve | client | loadtest | train | export | evaluate | defaults | weights  [ARGS...]

Each subcommand imports only its own module, so `cnnserve client` loads neither torch nor
ONNX Runtime.
"""
from __future__ import annotations

import importlib
import sys

from cnnserve.entry import exit_if_missing

COMMANDS = {   # subcommand: (module whose main() runs it, the install extra it needs, what it does)
    "serve": ("server.__main__", "serve", "serve a model repository over gRPC (python -m server)"),
    "client": ("client.cli", "client", "classify images, list models, check health (python -m client.cli)"),
    "loadtest": ("client.loadtest", "client", "load-test a server (python -m client.loadtest)"),
    "train": ("models.train", "train", "train a model on Fashion-MNIST (python -m models.train)"),
    "export": ("export.onnx", "train", "export a model to ONNX into a repository (python -m export.onnx)"),
    "evaluate": ("export.evaluate", "serve", "test accuracy of an exported model (python -m export.evaluate)"),
    "defaults": ("export.defaults", "train", "rebuild the default model repository (python -m export.defaults)"),
    "weights": ("models.pretrained", "train", "the shipped trained weights (python -m models.pretrained)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        listing = "\n".join(f"  {name:<{width}}  {help}" for name, (_, _, help) in COMMANDS.items())
        stream = sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr
        print(f"usage: cnnserve COMMAND [ARGS...]\n\ncommands:\n{listing}", file=stream)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0][:100]!r}", file=sys.stderr)
        return 0 if stream is sys.stdout else 2
    module_name, extra, _ = COMMANDS[argv[0]]
    sys.argv = [f"cnnserve {argv[0]}", *argv[1:]]     # the subcommand's usage line names it (cnnserve.entry)
    with exit_if_missing(extra):
        module = importlib.import_module(module_name)
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
