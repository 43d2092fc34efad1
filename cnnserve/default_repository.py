"""The default model repository's models that ship as weights only, built on first start.

A model whose ONNX file is too large to commit (AlexNet's is 187 MB in fp32) ships as its trained
weights alone (models/weights/); `python -m server`, serving the default repository, first builds
each such model that is not there yet into `model_repository/<arch>/` with
`python -m export.defaults --missing`, in a subprocess, since the server never imports torch.
Later starts find it built and start at once; a build made from other shipped weights than the
registry lists now (its metadata records their sha256) is rebuilt. The built directories are
git-ignored build products. This module decides what to build and starts the build; it imports
neither torch nor ONNX Runtime.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from cnnserve.metadata import ModelMetadata
from cnnserve.spec import METADATA_FILE, MODEL_FILE

WEIGHTS_INDEX = Path(__file__).resolve().parent.parent / "models" / "weights" / "index.json"
BUILT_VERSION = 1
LOCK_FILE = ".build.lock"        # in the repository: one build at a time (export.defaults takes it)

log = logging.getLogger("server")


def shipped_weights(index: Path = WEIGHTS_INDEX) -> dict[str, dict]:
    """arch -> its entry in the weights registry (file, sha256, dtype, size_bytes, …), read as plain JSON."""
    return {entry["arch"]: entry for entry in json.loads(index.read_text())} if index.is_file() else {}


def models_to_build(repository: Path, archs: Iterable[str] | None = None, index: Path = WEIGHTS_INDEX) -> dict[str, str]:
    """The shipped architectures (those of `archs`, when given) whose version 1 in `repository` must be
    built from the shipped weights, each with the reason. A version 1 exported from anything else
    (a local checkpoint) is the user's and is left as it is."""
    todo = {}
    for arch, entry in shipped_weights(index).items():
        if archs is not None and arch not in archs:
            continue
        version = repository / arch / str(BUILT_VERSION)
        if not (version / MODEL_FILE).is_file() or not (version / METADATA_FILE).is_file():
            todo[arch] = "not built yet"
            continue
        try:
            source = ModelMetadata.from_json(json.loads((version / METADATA_FILE).read_text())).checkpoint or {}
        except (OSError, ValueError):     # MetadataError is a ValueError
            todo[arch] = f"its {METADATA_FILE} is unreadable"
            continue
        if source.get("path") == f"models/weights/{entry['file']}" and source.get("sha256") != entry["sha256"]:
            todo[arch] = (f"built from older shipped weights (sha256 {str(source.get('sha256'))[:12]}…, "
                          f"the registry's are {entry['sha256'][:12]}…)")
    return todo


def build_missing(repository: Path, archs: Iterable[str] | None = None) -> None:
    """Build what `models_to_build` lists, showing the build's progress; without torch, say which models
    are left out and why (the server then serves the rest)."""
    todo = models_to_build(repository, archs)
    if not todo:
        return
    names = ", ".join(todo)
    if importlib.util.find_spec("torch") is None:
        remedy = ("pip install torch, or copy model_repository/<arch>/ from a machine that ran "
                "`python -m export.defaults --missing`")
        absent = [arch for arch in todo if not (repository / arch / str(BUILT_VERSION) / MODEL_FILE).is_file()]
        if absent:
            log.warning("not serving %s: not built yet, and building them from the shipped weights needs PyTorch, "
                        "which this installation does not have (%s); serving the others", ", ".join(absent), remedy)
        for arch in (arch for arch in todo if arch not in absent):
            log.warning("serving %s as it is: %s, and rebuilding it needs PyTorch (%s)", arch, todo[arch], remedy)
        return
    log.info("building %s into %s from the shipped weights (%s); once only, later starts find them built",
             names, repository, "; ".join(f"{arch}: {why}" for arch, why in todo.items()))
    command = [sys.executable, "-m", "export.defaults", "--missing", "--out", str(repository), "--archs", ",".join(todo)]
    try:
        result = subprocess.run(command, check=False)
    except KeyboardInterrupt:
        raise SystemExit(f"interrupted while building {names}; the next start builds them") from None
    if result.returncode != 0:
        log.error("building %s failed (exit status %d, its output is above); serving what %s holds",
                  names, result.returncode, repository)
