"""The models a server runs: each loaded, verified, warmed up and given a batcher, or refused
with its reason. The protocol adapters (gRPC today) look models up here."""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from server.batcher import Batcher, BatchingOptions
from server.errors import NotFound, Unavailable
from server.metrics import Metrics
from server.repository import ModelVersion, RepositoryError, list_model_dirs, load_version
from server.runtime import ModelRuntime, RuntimeOptions

log = logging.getLogger(__name__)
LOGITS = "logits"


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
        return [name for name in self.version.output_shapes if name != LOGITS] if self.version else []


class ModelStore:
    def __init__(self, repository: Path, names: list[str] | None, runtime_options: RuntimeOptions,
                 batching_overrides: dict, metrics: Metrics):
        self.repository = repository
        self.runtime_options = runtime_options
        self.batching_overrides = {k: v for k, v in batching_overrides.items() if v is not None}
        self.metrics = metrics
        found = {d.name: d for d in list_model_dirs(repository)}
        self.models = {name: ServedModel(name) for name in (names or found)}
        for name in self.models:
            if name not in found:
                self.models[name].error = f"no directory {name}/ in {repository}; it has {', '.join(found) or 'none'}"

    def load_all(self) -> None:
        for model in self.models.values():
            if model.error is None:
                self._load(model)

    def _load(self, model: ServedModel) -> None:
        try:
            version = load_version(self.repository / model.name)
            runtime = ModelRuntime(version.model_path, self.runtime_options)
            warmup_s = runtime.warm_up(self.runtime_options.warmup_runs)
        except (RepositoryError, OSError) as error:
            model.error = str(error)
        except Exception as error:  # ONNX Runtime raises its own exception types for bad model files
            model.error = f"ONNX Runtime cannot load {model.name}: {error}"
        if model.error:
            log.error("model %s is NOT serving: %s", model.name, model.error)
            return
        options = self._batching_options(version)
        model.version, model.runtime = version, runtime
        model.batcher = Batcher(model.name, runtime, options, self.metrics.batch_observer(model.name))
        log.info("model %s v%d loaded on %s (%s, sha256 %s…), warmed up in %.2f s; batching up to %d images, "
                 "%.1f ms delay", model.name, version.version, runtime.provider,
                 "trained" if version.metadata["trained"] else "UNTRAINED", version.metadata["sha256"][:12],
                 warmup_s, options.max_batch_size, options.max_queue_delay_s * 1e3)

    def _batching_options(self, version: ModelVersion) -> BatchingOptions:
        """Defaults from the model's config.pbtxt; command-line flags override them."""
        delay_us = version.config.dynamic_batching.max_queue_delay_microseconds
        max_batch = version.config.max_batch_size or BatchingOptions.max_batch_size
        options = BatchingOptions(max_batch_size=max_batch, max_queue_delay_s=delay_us / 1e6,
                                  max_queue_images=16 * max_batch)
        return replace(options, **self.batching_overrides)

    def get(self, name: str, version: int = 0) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise NotFound(f"model {name!r} is not served; models: {', '.join(self.models) or 'none'}")
        if not model.ready:
            raise Unavailable(f"model {name!r} is not serving: {model.error or 'still loading'}")
        if version and version != model.version.version:
            raise NotFound(f"model {name!r} has version {model.version.version} loaded, not {version}")
        return model

    def close(self) -> None:
        for model in self.models.values():
            if model.batcher:
                model.batcher.close()
