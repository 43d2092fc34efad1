"""The models a server runs: each loaded, verified, warmed up and given a batcher, or refused
with its reason. The data plane, and through it every protocol adapter, looks models up here."""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from cnnserve.repository import ModelVersion, RepositoryError, list_model_dirs, load_version, max_run_images
from server.batcher import CALLER_BATCHES, QUEUED_BATCHES, Batcher, BatchingOptions
from server.core_share import CoreShare
from server.errors import NotFound, Unavailable, quote
from server.metrics import Metrics
from server.runtime import ModelRuntime, RuntimeOptions

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    name: str
    version: ModelVersion | None = None
    runtime: ModelRuntime | None = None
    batcher: Batcher | None = None
    error: str | None = None          # why the model is not serving

    @property
    def ready(self) -> bool:
        return self.batcher is not None

    @property
    def feature_names(self) -> list[str]:
        return self.version.feature_names if self.version else []


class ModelStore:
    def __init__(self, repository: Path, names: list[str] | None, runtime_options: RuntimeOptions,
                 batching_overrides: dict, metrics: Metrics, cores: CoreShare | None = None):
        self.repository = repository
        self.runtime_options = runtime_options
        self.cores = cores
        self.batching_overrides = {k: v for k, v in batching_overrides.items() if v is not None}
        self.metrics = metrics
        found = {d.name: d for d in list_model_dirs(repository)}
        unknown = [name for name in names or () if name not in found]
        if unknown:
            raise RepositoryError(f"--models: no model {', '.join(map(repr, unknown))} in {repository}; "
                                  f"it has {', '.join(found) or 'none'}")
        self.models = {name: ServedModel(name) for name in (names or found)}

    def load_all(self) -> None:
        for model in self.models.values():
            if model.error is None:
                self._load(model)

    def _load(self, model: ServedModel) -> None:
        try:
            version = load_version(self.repository / model.name)
            runtime = ModelRuntime(version.model_path, self.runtime_options, self.cores)
            check_graph(version, runtime)
            warmup_s = runtime.warm_up(self.runtime_options.warmup_runs)
        except RepositoryError as error:
            model.error = str(error)
        except OSError as error:
            model.error = f"{model.name}: {error.strerror or type(error).__name__}"
        except Exception as error:  # ONNX Runtime raises its own exception types for bad model files
            # its messages name the file by its absolute path, which clients must not see
            text = str(error).replace(str(self.repository.resolve()), "<repository>").replace(str(self.repository),
                                                                                               "<repository>")
            model.error = f"ONNX Runtime cannot load {model.name}: {text[:300]}"
        if model.error:
            log.error("model %s is NOT serving: %s", model.name, model.error)
            return
        options = self._batching_options(version)
        model.version, model.runtime = version, runtime
        model.batcher = Batcher(model.name, runtime, options, self.metrics.batch_observer(model.name))
        log.info("model %s v%d loaded on %s (%s, sha256 %s…), warmed up in %.2f s; batching up to %d images, "
                 "%.1f ms delay, %d per run", model.name, version.version, runtime.provider,
                 "trained" if version.metadata.trained else "UNTRAINED", version.metadata.sha256[:12],
                 warmup_s, options.max_batch_size, options.max_queue_delay_s * 1e3, options.run_images)
        if not version.metadata.trained:
            log.warning("model %s v%d is UNTRAINED (random weights): its answers are chance; ModelInfo.trained "
                        "is false", model.name, version.version)

    def failures(self) -> dict[str, str]:
        return {name: model.error for name, model in self.models.items() if model.error}

    def _batching_options(self, version: ModelVersion) -> BatchingOptions:
        """Defaults from the model's config.pbtxt; command-line flags override them."""
        delay_us = version.config.dynamic_batching.max_queue_delay_microseconds
        max_batch = version.config.max_batch_size or BatchingOptions.max_batch_size
        options = BatchingOptions(max_batch_size=max_batch, max_queue_delay_s=delay_us / 1e6,
                                  max_queue_images=QUEUED_BATCHES * max_batch, max_caller_images=CALLER_BATCHES * max_batch,
                                  max_run_images=max_run_images(version.config))
        return replace(options, **self.batching_overrides)

    def get(self, name: str, version: int = 0) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise NotFound(f"model {quote(name)} is not served; models: {', '.join(self.models) or 'none'}")
        if not model.ready:
            raise Unavailable(f"model {name!r} is not serving: {model.error or 'still loading'}")
        if version and version != model.version.version:
            raise NotFound(f"model {name!r} has version {model.version.version} loaded, not {version}")
        return model

    def close(self) -> None:
        for model in self.models.values():
            if model.batcher:
                model.batcher.close()
                model.batcher.shutdown()


def check_graph(version: ModelVersion, runtime: ModelRuntime) -> None:
    """The metadata must describe the graph: its input, and outputs that the graph has."""
    where = f"{version.name}/{version.version}/metadata.json"
    if version.metadata.input.name != runtime.input_name:
        raise RepositoryError(f"{where}: input.name {version.metadata.input.name!r} is not the graph's "
                              f"input {runtime.input_name!r}")
    missing = [name for name in version.output_shapes if name not in runtime.output_names]
    if missing:
        raise RepositoryError(f"{where}: outputs lists {', '.join(map(repr, missing[:10]))}, which "
                              f"{version.model_path.name} does not have")

