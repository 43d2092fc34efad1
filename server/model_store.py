"""The models a server runs: for each, the versions its version policy (config.pbtxt) serves, each loaded,
verified, warmed up and given a batcher, or refused with its reason. The data plane, and through it every
protocol adapter, looks versions up here; server/model_control.py decides when the repository is read again.

A change of a model's versions (`update`) never drops a request. The new versions are built off the event
loop (sha256 and metadata checked, ONNX Runtime session created, warmed up) while the old ones serve; then the
served set is swapped in one assignment on the loop, so each request finds either the old set or the new one;
then each version that left it drains (the requests that looked it up before the swap finish on it: `in_flight`
counts them from lookup to answer) and is released (its batcher stops, its ONNX Runtime sessions are dropped).
A version that fails to build leaves what was serving in place.
"""
from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from cnnserve.repository import (
    ModelVersion,
    RepositoryError,
    list_model_dirs,
    load_version,
    max_run_images,
    policy_versions,
    read_config,
)
from cnnserve.spec import LOGITS_VIEW_SUFFIX, available_versions
from server.batcher import CALLER_BATCHES, QUEUED_BATCHES, Batcher, BatchingOptions
from server.core_share import CoreShare
from server.errors import NotFound, Unavailable, quote
from server.metrics import Metrics
from server.runtime import ModelRuntime, RuntimeOptions, release_freed_memory

log = logging.getLogger(__name__)
# A version loaded while models serve rests this many times each warm-up run's duration after it, so the callers
# keep most of the cores meanwhile (bench/model_rollout.py; at start-up nothing serves and it runs flat out).
WARMUP_PACE = 2.0

# What tells a version's files from those loaded: config.pbtxt's text, and (name, size, mtime, inode) of each file
# in the version's directory. Hashing the model files on every poll would read each model whole; the sha256 that
# export recorded is checked when a version loads. The config is compared by content, so rewriting it unchanged
# (as every export does) reloads nothing.
Fingerprint = tuple


@dataclass(frozen=True)
class Plan:
    """What the repository asks of one model now: the versions its policy serves, each with its files'
    fingerprint (None: the policy names a version that has no directory), or why it cannot be read."""
    name: str
    versions: dict[int, Fingerprint | None]
    error: str | None = None


def fingerprint(config_text: str, version_dir: Path) -> Fingerprint:
    files = sorted(path for path in version_dir.iterdir() if not path.name.startswith("."))
    return (config_text, *((path.name, st.st_size, st.st_mtime_ns, st.st_ino) for path in files for st in [path.stat()]))


def scan(model_dir: Path) -> Plan:
    """Read a model's config and its version directories (not the model files): a stat per file. Only whole
    version directories count: `python -m export.onnx` builds one under a hidden name and renames it into place."""
    name = model_dir.name
    try:
        config = read_config(model_dir)
        available = [v for v in available_versions(model_dir) if v > 0]
        wanted = policy_versions(config, available)
        if not wanted:
            return Plan(name, {}, f"{name}/ holds no numbered version directory")
        text = str(config)
        return Plan(name, {version: fingerprint(text, model_dir / str(version)) if version in available else None
                           for version in wanted})
    except RepositoryError as error:
        return Plan(name, {}, str(error))
    except OSError as error:            # a file renamed or removed while we read the directory
        return Plan(name, {}, f"{name}/: {error.strerror or type(error).__name__} while reading the directory")


@dataclass(eq=False)
class ServedVersion:
    """One loaded version of a model: what a request runs on, from lookup to answer."""
    name: str
    version: ModelVersion
    runtime: ModelRuntime | None
    batcher: Batcher | None
    fingerprint: Fingerprint | None = None
    in_flight: int = 0              # requests that looked this version up and are not answered yet
    _idle: asyncio.Event | None = None

    @property
    def feature_names(self) -> list[str]:
        return self.version.feature_names

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
        if not self.in_flight and self._idle is not None:
            self._idle.set()

    async def drained(self) -> None:
        """Once no new request can find this version: return when those that did are answered."""
        if self.in_flight:
            self._idle = asyncio.Event()
            await self._idle.wait()

    @functools.cached_property
    def logits_view(self) -> LogitsView:
        return LogitsView(self)

    def release(self) -> None:
        """Stop the batcher and drop the ONNX Runtime sessions: the memory goes back. Nothing else holds them
        (health and metrics keep names only)."""
        if self.batcher is not None:
            self.batcher.close()
            self.batcher.shutdown()
        self.batcher = self.runtime = None


class LogitsView:
    """A served version as NAME.logits (`cnnserve.spec.LOGITS_VIEW_SUFFIX`): the same session and batcher, its
    metadata and config listing the logits alone. Requests through it count in the version's in-flight ones."""

    def __init__(self, served: ServedVersion):
        self.served = served
        self.name = served.name + LOGITS_VIEW_SUFFIX
        self.version = served.version.logits_only(self.name)
        self.feature_names: list[str] = []

    @property
    def runtime(self) -> ModelRuntime | None:
        return self.served.runtime

    @property
    def batcher(self) -> Batcher | None:
        return self.served.batcher

    def enter(self) -> None:
        self.served.enter()

    def leave(self) -> None:
        self.served.leave()


Servable = ServedVersion | LogitsView       # what a request runs on


def versions_text(numbers) -> str:
    """'version 2', 'versions 2, 3'."""
    numbers = list(numbers)
    return f"version{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))}"


@dataclass(frozen=True)
class VersionFailure:
    fingerprint: Fingerprint | None     # the files that failed: the same files are not tried again
    reason: str


@dataclass(eq=False)
class ServedModel:
    """A model as the server has it: the versions serving now (the newest answers requests that name none),
    the ones on their way in or out, and why anything it should serve does not."""
    name: str
    versions: dict[int, ServedVersion] = field(default_factory=dict)     # serving now, ascending
    error: str | None = None        # why it serves nothing or its config cannot be read ("unloaded", ...)
    failed: dict[int, VersionFailure] = field(default_factory=dict)      # versions its policy serves that failed
    loading: set[int] = field(default_factory=set)
    unloading: set[int] = field(default_factory=set)
    wanted: bool = True             # to be served (readiness counts it); explicit mode: loaded and not unloaded

    @property
    def ready(self) -> bool:
        return bool(self.versions)

    @property
    def default(self) -> ServedVersion | None:
        """The version a request that names none gets: the newest served."""
        return self.versions[max(self.versions)] if self.versions else None

    @property
    def default_version(self) -> int:
        return max(self.versions, default=0)

    @property
    def reason(self) -> str:
        """Why it serves nothing, or what failed beside the versions that serve."""
        reasons = ([self.error] if self.error else []) + [failure.reason for _, failure in sorted(self.failed.items())]
        if reasons and self.versions:
            reasons.append(f"serving {versions_text(self.versions)}")
        return "; ".join(reasons)


class ModelStore:
    def __init__(self, repository: Path, names: list[str] | None, runtime_options: RuntimeOptions,
                 batching_overrides: dict, metrics: Metrics, cores: CoreShare | None = None):
        self.repository = repository
        self.runtime_options = runtime_options
        self.cores = cores
        self.batching_overrides = {k: v for k, v in batching_overrides.items() if v is not None}
        self.metrics = metrics
        found = [d.name for d in list_model_dirs(repository)]
        unknown = [name for name in names or () if name not in found]
        if unknown:
            raise RepositoryError(f"--models: no model {', '.join(map(repr, unknown))} in {repository}; "
                                  f"it has {', '.join(found) or 'none'}")
        self.names = names                   # the models the server may serve (None: every one in the repository)
        self.models: dict[str, ServedModel] = {}
        self.on_change: Callable[[ServedModel], None] = lambda model: None   # after each swap, on the loop
        # One thread builds versions, one at a time: loading competes with serving for the cores, and a second
        # load at once would only slow both.
        self._builder = ThreadPoolExecutor(1, thread_name_prefix="model-load")
        self._retiring: set[asyncio.Task] = set()      # versions draining (the loop keeps only weak references)

    def model_names(self) -> list[str]:
        """The models of the repository the server may serve, as the directory holds them now."""
        return [d.name for d in list_model_dirs(self.repository) if self.names is None or d.name in self.names]

    async def load_all(self) -> None:
        """Load every model the server may serve as its version policy says, with no model control around (the
        server itself starts through server/model_control.py)."""
        for name in await asyncio.to_thread(self.model_names):
            await self.update(await asyncio.to_thread(scan, self.repository / name))

    async def update(self, plan: Plan, retry_failed: bool = False) -> ServedModel:
        """Serve what `plan` asks: build the new and changed versions (off the loop), swap them in, drain and
        release those that left. A version that fails keeps serving its old files if it had any, or one of the
        versions it would have replaced (the newest first) stands in for it; the same failed files are not tried
        again unless `retry_failed`. With nothing served yet, whatever built serves. Call on the loop, one call
        per model at a time."""
        model = self.models.get(plan.name)
        if model is None:
            model = self.models[plan.name] = ServedModel(plan.name)
        if plan.error and model.error != plan.error:
            log.error("model %s: %s%s", plan.name, plan.error, "; its versions serve on" if model.versions else "")
        model.error = plan.error
        if plan.error and model.versions:
            return model                  # an unreadable config.pbtxt: what serves stays
        served, failures = {}, []
        for version, fingerprint in plan.versions.items():
            current, failure = model.versions.get(version), model.failed.get(version)
            if current is not None and current.fingerprint == fingerprint:
                served[version] = current
            elif failure is not None and failure.fingerprint == fingerprint and not retry_failed:
                failures.append(version)
            elif (built := await self._build(model, version, fingerprint)) is not None:
                served[version] = built
            else:
                failures.append(version)
        for version in failures:           # a changed version whose new files fail keeps its old ones
            if version in model.versions:
                served[version] = model.versions[version]
        standing_in = sorted(set(model.versions) - set(served), reverse=True)[:len(set(failures) - set(served))]
        served.update({version: model.versions[version] for version in standing_in})
        model.failed = {version: failure for version, failure in model.failed.items() if version in plan.versions}
        await self._swap(model, dict(sorted(served.items())))
        return model

    async def unload(self, name: str, reason: str = "unloaded") -> ServedModel | None:
        """Stop serving every version of `name`: no new request finds one; those in flight finish; then released."""
        model = self.models.get(name)
        if model is None:
            return None
        model.error, model.failed = reason, {}
        await self._swap(model, {})
        return model

    async def _swap(self, model: ServedModel, served: dict[int, ServedVersion]) -> None:
        leaving = [old for version, old in model.versions.items() if served.get(version) is not old]
        if served != model.versions:
            model.versions = served
            log.info("model %s serves %s", model.name, versions_text(served) if served else "no version")
        model.unloading.update(old.version.version for old in leaving)
        self.on_change(model)        # also unchanged: a model just found must get its health name
        if leaving:
            # shielded: a load or unload call that is cancelled (its client left) must not cut the drain short
            retiring = asyncio.get_running_loop().create_task(self._retire(model, leaving))
            self._retiring.add(retiring)
            retiring.add_done_callback(self._retiring.discard)
            await asyncio.shield(retiring)

    async def _retire(self, model: ServedModel, leaving: list[ServedVersion]) -> None:
        try:
            await asyncio.gather(*(old.drained() for old in leaving))
        finally:         # also when the server stops, after the data plane drained
            for old in leaving:
                old.release()
                model.unloading.discard(old.version.version)
                log.info("model %s v%d drained and released", model.name, old.version.version)
        await asyncio.get_running_loop().run_in_executor(self._builder, release_freed_memory)

    async def _build(self, model: ServedModel, version: int, fingerprint: Fingerprint | None) -> ServedVersion | None:
        model.loading.add(version)
        try:
            serving = any(served.versions for served in self.models.values())
            built = await asyncio.get_running_loop().run_in_executor(self._builder, self.build, model.name, version,
                                                                     fingerprint, WARMUP_PACE if serving else 0.0)
        finally:
            model.loading.discard(version)
        if isinstance(built, str):
            log.error("model %s v%d is NOT serving: %s", model.name, version, built)
            model.failed[version] = VersionFailure(fingerprint, built)
            return None
        model.failed.pop(version, None)
        return built

    def build(self, name: str, version: int, fingerprint: Fingerprint | None, pace: float = 0.0) -> ServedVersion | str:
        """One version loaded, checked against its metadata and warmed up (in the builder thread, its runs paced by
        `pace`: `ModelRuntime.warm_up`), or why not."""
        if fingerprint is None:
            return (f"{name} v{version}: no directory {name}/{version}/ (version_policy specific lists it)")
        try:
            loaded = load_version(self.repository / name, version)
            runtime = ModelRuntime(loaded.model_path, self.runtime_options, self.cores)
            check_graph(loaded, runtime)
            warmup_s = runtime.warm_up(self.runtime_options.warmup_runs, pace=pace)
        except RepositoryError as error:
            return str(error)
        except OSError as error:
            return f"{name} v{version}: {error.strerror or type(error).__name__}"
        except Exception as error:  # ONNX Runtime raises its own exception types for bad model files
            # its messages name the file by its absolute path, which clients must not see
            text = str(error).replace(str(self.repository.resolve()), "<repository>").replace(str(self.repository),
                                                                                               "<repository>")
            return f"ONNX Runtime cannot load {name} v{version}: {text[:300]}"
        options = self._batching_options(loaded)
        batcher = Batcher(name, runtime, options, self.metrics.batch_observer(name, version))
        log.info("model %s v%d loaded on %s (%s, sha256 %s…), warmed up in %.2f s; batching up to %d images, "
                 "%.1f ms delay, %d per run", name, version, runtime.provider,
                 "trained" if loaded.metadata.trained else "UNTRAINED", loaded.metadata.sha256[:12],
                 warmup_s, options.max_batch_size, options.max_queue_delay_s * 1e3, options.run_images)
        if not loaded.metadata.trained:
            log.warning("model %s v%d is UNTRAINED (random weights): its answers are chance; ModelInfo.trained "
                        "is false", name, version)
        return ServedVersion(name, loaded, runtime, batcher, fingerprint)

    def failures(self) -> dict[str, str]:
        return {name: model.reason for name, model in self.models.items() if model.error or model.failed}

    def _batching_options(self, version: ModelVersion) -> BatchingOptions:
        """Defaults from the model's config.pbtxt; command-line flags override them."""
        delay_us = version.config.dynamic_batching.max_queue_delay_microseconds
        max_batch = version.config.max_batch_size or BatchingOptions.max_batch_size
        options = BatchingOptions(max_batch_size=max_batch, max_queue_delay_s=delay_us / 1e6,
                                  max_queue_images=QUEUED_BATCHES * max_batch, max_caller_images=CALLER_BATCHES * max_batch,
                                  max_run_images=max_run_images(version.config))
        return replace(options, **self.batching_overrides)

    def get(self, name: str, version: int = 0) -> ServedVersion:
        """The version a request runs on: `version`, or (0) the newest served."""
        model = self.models.get(name)
        if model is None:
            raise NotFound(f"model {quote(name)} is not served; models: {', '.join(self.models) or 'none'}")
        if not model.versions:
            raise Unavailable(f"model {name!r} is not serving: {model.reason or 'still loading'}")
        if not version:
            return model.versions[max(model.versions)]
        served = model.versions.get(version)
        if served is None:
            raise NotFound(f"model {name!r} has no version {version} served; it serves "
                           f"{versions_text(model.versions)}")
        return served

    def close(self) -> None:
        """After the data plane has drained: release every version."""
        for model in self.models.values():
            for served in model.versions.values():
                served.release()
        self._builder.shutdown(wait=False, cancel_futures=True)


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

