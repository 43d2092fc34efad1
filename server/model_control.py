"""Model control: when the server reads its model repository again, and the KServe v2 repository extension
(index, load, unload) in protocol-neutral terms, for the gRPC and HTTP adapters (server/kserve.py,
server/http.py) to convert.

Triton's modes, with Triton's names and meaning:
- `none`: the repository is read once, at start; load and unload are refused.
- `poll`: read again every `--repository-poll-secs`; new, changed and removed versions and models are
  applied. The repository on disk is the authority, so load and unload are refused here too.
- `explicit`: at start only the `--load-model` models (`*`: all); after that, load and unload calls decide.

Every change goes through `ModelStore.update` or `ModelStore.unload`, which never drop a request; changes to one
model are serialized by a lock of its own. Load and unload name a directory of the configured repository, and
nothing else: no path, no config or file contents from the caller.

With `--workers N`, poll mode needs nothing more: each worker polls the repository on its own, so all of them
apply a change within one poll interval of its appearing. In explicit mode a load or unload goes through a log of
commands that every worker follows (server/control_log.py), and answers once every worker applied it.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from cnnserve.repository import RepositoryError
from server.control_log import FOLLOW_S, LOAD, UNLOAD, WAIT_S, ControlLog
from server.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound, ServiceError, quote
from server.model_store import ModelStore, ServedModel, scan, versions_text

log = logging.getLogger(__name__)

MODES = ("none", "poll", "explicit")
ALL_MODELS = "*"                # --load-model's "every model"
MAX_NAME_LENGTH = 255           # a directory name (NAME_MAX)
UNLOAD_PARAMETERS = ("unload_dependents",)   # tritonclient sends it; there are no ensembles, so nothing depends
NOT_LOADED = {"none": "not loaded: the server read its repository at start (--model-control-mode none)",
              "poll": "not loaded yet: the next poll of the repository loads it",
              "explicit": "not loaded (RepositoryModelLoad loads it)"}


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index: a model's version (0: the model as a whole, when no version is known)."""
    name: str
    version: int
    state: str          # READY, LOADING, UNLOADING or UNAVAILABLE
    reason: str


def load_failure(model: ServedModel | None) -> str:
    """Why a load did not serve the whole model ("": it did)."""
    if model is not None and model.ready and not model.failed and not model.error:
        return ""
    return f"load failed for model {model.name if model else '?'!r}: {model.reason if model else 'not loaded'}"


def check_name(name: str) -> None:
    """A model name is the name of a directory in the repository, never a path out of it."""
    if (not name or len(name) > MAX_NAME_LENGTH or name.startswith(".") or "/" in name or "\\" in name
            or "\0" in name):
        raise InvalidArgument(f"model name {quote(name)} is not a model of the repository: a name has no '/', '\\', "
                              f"NUL or leading '.' (no path, no '..'), and at most {MAX_NAME_LENGTH} characters")


def check_parameters(names: Iterable[str], allowed: tuple[str, ...], call: str) -> None:
    names = list(names)
    if any(name == "config" or name.startswith("file:") for name in names):
        raise InvalidArgument(f"{call}: this server loads models only from its model repository; the 'config' and "
                              f"'file:' overrides are refused (change the repository instead)")
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise InvalidArgument(f"{call}: unknown parameter(s) {', '.join(quote(n, 50) for n in unknown[:5])}; it "
                              f"takes {', '.join(allowed) or 'none'}")


def check_repository(repository: str) -> None:
    if repository:
        raise InvalidArgument(f"repository {quote(repository)}: this server has one model repository; leave "
                              f"repository_name empty")


def version_entries(model: ServedModel) -> list[IndexEntry]:
    """A model's rows: one per version serving, on its way in or out, or failed; one for the model without any."""
    numbers = sorted(set(model.versions) | model.loading | model.unloading | set(model.failed))
    if not numbers:
        return [IndexEntry(model.name, 0, "UNAVAILABLE", model.reason or "not loaded")]
    entries = []
    for number in numbers:
        failure = model.failed.get(number)
        if number in model.versions:      # with a failure: its changed files failed, the loaded ones serve on
            state, reason = "READY", "; ".join(filter(None, [model.error, failure and failure.reason]))
        elif number in model.loading:
            state, reason = "LOADING", ""
        elif number in model.unloading:
            state, reason = "UNLOADING", model.error or ""
        else:
            state, reason = "UNAVAILABLE", failure.reason if failure else model.reason
        entries.append(IndexEntry(model.name, number, state, reason))
    return entries


class ModelControl:
    def __init__(self, store: ModelStore, mode: str = "none", poll_s: float = 15.0, load_models: Iterable[str] = (),
                 commands: ControlLog | None = None):
        if mode not in MODES:
            raise ValueError(f"model control mode {mode!r} is not one of {', '.join(MODES)}")
        self.store, self.mode, self.poll_s = store, mode, poll_s
        self.load_models = tuple(load_models)
        self._locks: dict[str, asyncio.Lock] = {}       # one per model of the repository or of the store
        self._poller: asyncio.Task | None = None      # the repository poll, or the command log's follower
        self.commands = commands if mode == "explicit" else None    # with --workers: the log the workers follow
        self._repository_error: str | None = None       # the last one logged, so a lasting one is logged once

    def initial_models(self) -> list[str] | None:
        """What start-up loads: every model (None), or in explicit mode those of --load-model; unknown names are
        a start-up error (RepositoryError), as --models' are."""
        if self.mode != "explicit" or ALL_MODELS in self.load_models:
            return None
        for name in self.load_models:
            check_name(name)
        found = self.store.model_names()
        unknown = [name for name in self.load_models if name not in found]
        if unknown:
            raise RepositoryError(f"--load-model: no model {', '.join(map(repr, unknown))} in "
                                  f"{self.store.repository}; it has {', '.join(found) or 'none'}")
        return list(dict.fromkeys(self.load_models))

    async def start(self, names: list[str] | None) -> None:
        """Load `names` (None: every model of the repository), then poll in poll mode. Every one of them is known
        (not ready) from the start, so that readiness waits for the last of them."""
        names = names if names is not None else await asyncio.to_thread(self.store.model_names)
        last_word, last = await asyncio.to_thread(self.commands.last_word) if self.commands else ({}, 0)
        names = [*(n for n in names if n not in last_word), *(n for n, c in last_word.items() if c.action == LOAD)]
        for name in names:
            self.store.models.setdefault(name, ServedModel(name))
        for name in names:
            async with self._lock(name):
                await self._apply(name)
        if self.mode == "poll":
            self._poller = asyncio.get_running_loop().create_task(self._poll_forever(), name="repository-poll")
        if self.commands:       # what the others serve: models unloaded show as such, not as never loaded
            for command in last_word.values():
                if command.action == UNLOAD:
                    self.store.models.setdefault(command.name, ServedModel(command.name, error="unloaded", wanted=False))
                model = self.store.models.get(command.name)
                if model is not None:
                    model.wanted = command.action == LOAD and model.ready
                self.commands.acknowledge(command.sequence, load_failure(model) if command.action == LOAD else "")
            if last:
                self.commands.acknowledge(last, "")
            self._poller = asyncio.get_running_loop().create_task(self._follow_forever(), name="model-control-log")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    def _lock(self, name: str) -> asyncio.Lock:
        """Only for names of the repository or of the store: the locks are as many as the models."""
        return self._locks.setdefault(name, asyncio.Lock())

    async def _apply(self, name: str, retry_failed: bool = False) -> ServedModel:
        return await self.store.update(await asyncio.to_thread(scan, self.store.repository / name), retry_failed)

    async def _poll_forever(self) -> None:
        """Poll until cancelled. One failed poll, or one model that fails to load, never stops the polling."""
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.poll()
            except Exception:  # a bug must not end the polling for the life of the server: log it, poll again
                log.exception("polling the model repository failed; polling goes on")

    async def poll(self) -> None:
        """Apply what the repository holds now: each model's versions, models added, models removed."""
        try:
            names = await asyncio.to_thread(self.store.model_names)
        except RepositoryError as error:     # e.g. a volume unmounted: what is loaded serves on
            if str(error) != self._repository_error:
                log.error("%s; the models loaded serve on, and polling goes on", error)
            self._repository_error = str(error)
            return
        self._repository_error = None
        for name in names:
            async with self._lock(name):
                await self._apply(name)
        for name in [name for name in self.store.models if name not in names]:
            async with self._lock(name):
                if name in self.store.models:
                    log.info("model %s left the repository: draining and releasing it", name)
                    await self.store.unload(name, "removed from the repository")
                    del self.store.models[name]

    def _check_mode(self, call: str) -> None:
        if self.mode != "explicit":
            why = ("the repository on disk decides what serves: add, change or remove its version directories"
                   if self.mode == "poll" else "the server serves what its repository held at start")
            raise FailedPrecondition(f"{call} is refused: the server runs with --model-control-mode {self.mode} "
                                     f"({why}); start it with --model-control-mode explicit to load and unload "
                                     f"models by API")

    def _check_call(self, method: str, name: str, parameters: Iterable[str], allowed, repository: str) -> None:
        """What every load and unload call must pass before it touches a model: the mode, the name, the
        repository and the parameters."""
        self._check_mode(method)
        check_name(name)
        check_repository(repository)
        check_parameters(parameters, allowed, method)

    async def load(self, name: str, parameters: Iterable[str] = (), repository: str = "") -> None:
        """Load a model of the repository, or apply what changed in it: its new and changed versions are built and
        warmed before they take traffic; files that failed before are tried again."""
        self._check_call("RepositoryModelLoad", name, parameters, (), repository)
        names = await asyncio.to_thread(self.store.model_names)
        if name not in names:
            raise NotFound(f"model {quote(name)} is not in the model repository; it has: {', '.join(names) or 'none'}")
        if self.commands:
            await self._through_every_worker(LOAD, name)
        else:
            await self._load(name)

    async def _load(self, name: str) -> None:
        async with self._lock(name):
            before = self.store.models.get(name)
            was_wanted = before is not None and before.wanted
            model = await self._apply(name, retry_failed=True)
            model.wanted = was_wanted or model.ready      # a model that never loaded does not hold readiness down
            if failure := load_failure(model):
                raise InvalidArgument(failure)
        log.info("RepositoryModelLoad: model %s serves %s", name, versions_text(model.versions))

    async def unload(self, name: str, parameters: Iterable[str] = (), repository: str = "") -> None:
        """Stop serving every version of a model; returns once the requests in flight finished and the versions
        are released."""
        self._check_call("RepositoryModelUnload", name, parameters, UNLOAD_PARAMETERS, repository)
        if name not in self.store.models:
            if name in await asyncio.to_thread(self.store.model_names):
                if not self.commands:
                    return                   # not loaded: nothing to unload (here; other workers may have it)
            else:
                raise NotFound(f"model {quote(name)} is neither loaded nor in the model repository")
        if self.commands:
            await self._through_every_worker(UNLOAD, name)
        else:
            await self._unload(name)

    async def _unload(self, name: str) -> None:
        async with self._lock(name):
            model = self.store.models.get(name)
            if model is not None:
                model.wanted = False
                await self.store.unload(name)
        log.info("RepositoryModelUnload: model %s unloaded", name)

    async def _through_every_worker(self, action: str, name: str) -> None:
        """Log the command, and answer once every worker applied it (this one too, by following the log)."""
        sequence = await asyncio.to_thread(self.commands.append, action, name)
        outcomes = await self.commands.wait(sequence)
        silent = [worker for worker, outcome in outcomes.items() if outcome is None]
        failed = {worker: outcome for worker, outcome in outcomes.items() if outcome}
        call = "RepositoryModelLoad" if action == LOAD else "RepositoryModelUnload"
        if failed:
            raise InvalidArgument(f"{call} of model {name!r} failed on {len(failed)} of {len(outcomes)} workers: "
                                  + "; ".join(f"worker {worker}: {reason}" for worker, reason in failed.items())
                                  + (f"; worker(s) {', '.join(map(str, silent))} did not answer" if silent else ""))
        if silent:
            raise DeadlineExceeded(f"{call} of model {name!r}: worker(s) {', '.join(map(str, silent))} of "
                                   f"{len(outcomes)} did not apply it within {WAIT_S:.0f} s (the "
                                   f"others did); they apply it when they can, or when they restart")

    async def _follow_forever(self) -> None:
        """Apply the commands of the log in order, acknowledging each, until cancelled."""
        while True:
            await asyncio.sleep(FOLLOW_S)
            for command in await asyncio.to_thread(self.commands.commands, self.commands.applied):
                try:
                    await (self._load if command.action == LOAD else self._unload)(command.name)
                    outcome = ""
                except ServiceError as error:
                    outcome = str(error)
                except Exception as error:  # a bug must not stop this worker following: report it, follow on
                    log.exception("model control command %d (%s %s) failed", command.sequence, command.action,
                                  command.name)
                    outcome = f"internal error: {error!r}"
                await asyncio.to_thread(self.commands.acknowledge, command.sequence, outcome)

    async def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every model of the repository (those --models allows) and every model loaded, by name, then version."""
        try:
            names = await asyncio.to_thread(self.store.model_names)
        except RepositoryError:
            names = []
        entries = []
        for name in sorted(set(names) | set(self.store.models)):
            model = self.store.models.get(name)
            entries += version_entries(model) if model else [IndexEntry(name, 0, "UNAVAILABLE", NOT_LOADED[self.mode])]
        return [entry for entry in entries if entry.state == "READY" or not ready_only]
