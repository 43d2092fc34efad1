"""What the server counts per model, in one place: the totals that KServe v2 `ModelStatistics` reports and the
Prometheus series served over HTTP on `--metrics-port` (text format at /metrics).

With `--workers N` each worker process counts its own requests. Prometheus scrapes each worker on its
own port (and sums), but a ModelStatistics call reaches one worker, so the workers share their totals:
each rewrites a small file in a directory the parent made, every `PUBLISH_S`, and a statistics answer
sums its own live totals with the others' files.

Counting happens on the event loop, once per request and once per ONNX Runtime run, into plain integers;
Prometheus reads them when it scrapes, through a custom collector (prometheus_client's API for numbers kept
elsewhere). prometheus_client's own Counter and Histogram objects take a lock per increment and walk the
buckets in Python, a cost every request would pay on the loop that all requests share (measured by
`python bench/handler_cpu.py`, with these calls and without; bench/HISTORY.md, f60e1cb).
"""
from __future__ import annotations

import asyncio
import bisect
import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PUBLISH_S = 0.1      # how often a worker shares its statistics totals with the others
RESTARTS_FILE = "restarts.json"     # with --workers: the parent's count of replaced workers, by worker index


class Histogram:
    """Observations counted per bucket (an upper bound: value <= bound), exported cumulatively as Prometheus does."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)     # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, int]]:
        counts, total = list(self.counts), 0    # a copy: the loop may count while a scrape reads
        cumulative = []
        for bound, count in zip([*map(floatToGoString, self.bounds), "+Inf"], counts):
            total += count
            cumulative.append((bound, total))
        return cumulative


@dataclass(frozen=True)
class StageTimes:
    """Where one successful request's time went, in the stages of Triton's statistics extension. `success` is the
    data plane's whole handling of the request: from its adapter handing it over, parsed, to its outputs being
    ready as arrays. Inside it:
    - compute_input: preparing the model's input: the request's checks and the decoding of its images into uint8
      pixels (with the wait for a decoding thread when they decode off the loop), then, in each run it joins,
      gathering that run's requests' rows into one input array;
    - queue: waiting in the model's batcher for a run (and, for a request split over runs, between them);
    - compute_infer: ONNX Runtime's run(s), with the hand-off to the model's compute thread and back;
    - compute_output: ranking the classes (when top-k or classification is asked for), splitting each run's
      outputs into its requests' rows, joining a split request's parts, and taking its top-k.
    A run's stages count in full for each request in it, as Triton counts a batch's. No stage covers handing the
    request to the batcher and the answer back across the event loop, so success.ns >= the sum of the four (the
    difference is the server overhead perf_analyzer reports). The protocols' own work, parsing a message before
    and serializing its answer after, lies outside `success`."""
    queue_s: float = 0.0
    compute_input_s: float = 0.0
    compute_infer_s: float = 0.0
    compute_output_s: float = 0.0


@dataclass
class BatchTotals:
    """One batch size's ONNX Runtime runs: a `batch_stats` entry, each stage summed over the runs."""
    count: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0

    def add(self, other: BatchTotals) -> None:
        for f in fields(BatchTotals):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class Totals:
    """One model version's totals in the shape of Triton's ModelStatistics (KServe v2 `ModelStatistics`). Each
    stage's count is `success_count` (one per successful request, as Triton counts them) and its ns are summed over
    those requests (`StageTimes`)."""
    version: int = 0             # the version that answered; 0: refused before one was chosen
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
    inference_count: int = 0     # images
    last_inference_ms: int = 0   # wall clock, ms since the epoch
    batches: dict[int, BatchTotals] = field(default_factory=dict)   # by batch size (images per run)

    @property
    def execution_count(self) -> int:
        """ONNX Runtime runs."""
        return sum(batch.count for batch in self.batches.values())

    def to_json(self) -> dict:
        """The totals as the workers publish them."""
        return {**{name: getattr(self, name) for name in SCALARS},
                "batches": {size: asdict(batch) for size, batch in self.batches.items()}}

    @classmethod
    def from_json(cls, totals: dict) -> Totals:
        return cls(**{name: totals[name] for name in SCALARS},
                   batches={int(size): BatchTotals(**batch) for size, batch in totals["batches"].items()})

    def add(self, other: Totals) -> None:
        for name in SUMMED:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.last_inference_ms = max(self.last_inference_ms, other.last_inference_ms)
        for size, batch in other.batches.items():
            self.batches.setdefault(size, BatchTotals()).add(batch)


SCALARS = [f.name for f in fields(Totals) if f.name != "batches"]
SUMMED = [name for name in SCALARS if name not in ("version", "last_inference_ms")]     # summed over workers


@dataclass
class ModelStats:
    """One model's counts: the ModelStatistics totals of each of its versions, and the Prometheus series (one per
    model, whichever version answered)."""
    versions: dict[int, Totals] = field(default_factory=dict)   # by version; 0: requests refused before one was chosen
    in_flight: int = 0           # requests being handled now
    codes: Counter = field(default_factory=Counter)        # finished requests by gRPC status name
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))     # per request, seconds
    queue: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))       # per request, seconds
    compute: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))     # per run, seconds
    batch_size: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))    # per run, images

    def version(self, version: int) -> Totals:
        totals = self.versions.get(version)
        if totals is None:
            totals = self.versions[version] = Totals(version=version)
        return totals


# (name, help, the ModelStats histogram it shows)
HISTOGRAMS = [("cnnserve_request_latency_seconds", "Classify latency inside the server", "latency"),
              ("cnnserve_queue_seconds", "Time a request waited for its batch", "queue"),
              ("cnnserve_compute_seconds", "ONNX Runtime time per batch (compute_infer)", "compute"),
              ("cnnserve_batch_size", "Images per ONNX Runtime run", "batch_size")]


class Metrics:
    def __init__(self, shared_dir: Path | None = None, worker: int = 0):
        self.stats: dict[str, ModelStats] = {}
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self.shared_dir, self.worker = shared_dir, worker     # with --workers: where the workers share totals

    def totals(self, model: str, served: int) -> dict[int, Totals]:
        """A model's ModelStatistics totals by version: this process's, plus the other workers' last published
        ones. `served` is the version this process serves by default; it always has an entry, and requests
        refused before a version was chosen (version 0: an unknown version, a model not loaded) count for it."""
        by_version = {served: Totals(version=served)}
        mine = [totals.to_json() for totals in self.model(model).versions.values()]
        for published in [*mine, *(totals for others in self._others() for totals in others.get(model, ()))]:
            version = published["version"] or served
            by_version.setdefault(version, Totals(version=version)).add(Totals.from_json(published))
        return by_version

    def publish(self) -> None:
        """Share this worker's totals (written whole, then renamed: readers never see half a file)."""
        totals = {name: [totals.to_json() for totals in stats.versions.values()] for name, stats in self.stats.items()}
        path = self.shared_dir / f"worker-{self.worker}.json"
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(totals))
        os.replace(partial, path)

    async def publish_forever(self) -> None:
        try:
            while True:
                self.publish()
                await asyncio.sleep(PUBLISH_S)
        except OSError as error:     # the directory is gone (the parent was killed): statistics stay local
            log.warning("cannot share statistics with the other workers any more (%s)", error.strerror or error)

    def _others(self) -> list[dict]:
        """The other workers' last published totals: {model: [totals of each version]} each."""
        if self.shared_dir is None:
            return []
        published = []
        for path in self.shared_dir.glob("worker-*.json"):
            if path.name != f"worker-{self.worker}.json":
                try:
                    published.append(json.loads(path.read_text()))
                except (OSError, ValueError):    # a worker that never published, or is gone with its directory
                    continue
        return published

    def model(self, name: str) -> ModelStats:
        stats = self.stats.get(name)
        if stats is None:
            stats = self.stats[name] = ModelStats()
        return stats

    def started(self, model: str) -> None:
        """A request for `model` is being handled."""
        self.model(model).in_flight += 1

    def finished(self, model: str) -> None:
        self.stats[model].in_flight -= 1

    def batch_observer(self, model: str, version: int):
        """A callback for a version's batcher: records one ONNX Runtime run of `size` images and its stages' seconds
        (`StageTimes`, for the run as a whole). It holds names, not the model: a version released is not kept."""
        def observe(size: int, input_s: float, infer_s: float, output_s: float) -> None:
            stats = self.model(model)
            stats.batch_size.observe(size)
            stats.compute.observe(infer_s)
            batches = stats.version(version).batches
            batch = batches.get(size)
            if batch is None:
                batch = batches[size] = BatchTotals()
            batch.count += 1
            batch.compute_input_ns += int(input_s * 1e9)
            batch.compute_infer_ns += int(infer_s * 1e9)
            batch.compute_output_ns += int(output_s * 1e9)
        return observe

    def record(self, model: str, version: int, status: str, seconds: float, images: int = 0,
               times: StageTimes = StageTimes()) -> None:
        """One finished inference request, whatever protocol carried it, answered by `version` (0: refused before
        a version was chosen): `seconds` in all, and for a successful one its images and the stages of those
        seconds."""
        stats = self.model(model)
        stats.codes[status] += 1
        totals = stats.version(version)
        # Times in whole nanoseconds, truncated (int), so that the stages of a request, each truncated, never add
        # up to more than its total (written out rather than a helper's call: this runs for every request).
        if status == "OK":
            stats.latency.observe(seconds)
            stats.queue.observe(times.queue_s)
            totals.success_count += 1
            totals.success_ns += int(seconds * 1e9)
            totals.queue_ns += int(times.queue_s * 1e9)
            totals.compute_input_ns += int(times.compute_input_s * 1e9)
            totals.compute_infer_ns += int(times.compute_infer_s * 1e9)
            totals.compute_output_ns += int(times.compute_output_s * 1e9)
            totals.inference_count += images
            totals.last_inference_ms = int(time.time() * 1000)
        else:
            totals.fail_count += 1
            totals.fail_ns += int(seconds * 1e9)

    def collect(self):
        """The Prometheus view of the counts (called by the registry when scraped)."""
        models = list(self.stats.items())
        requests = CounterMetricFamily("cnnserve_requests", "Classify requests by model and gRPC status code",
                                       labels=["model", "code"])
        in_flight = GaugeMetricFamily("cnnserve_in_flight_requests", "Classify requests being handled",
                                      labels=["model"])
        for name, stats in models:
            for code, count in list(stats.codes.items()):
                requests.add_metric([name, code], count)
            in_flight.add_metric([name], stats.in_flight)
        yield requests
        yield in_flight
        if self.shared_dir is not None:
            yield self.worker_restarts()
        for metric, help_text, attribute in HISTOGRAMS:
            family = HistogramMetricFamily(metric, help_text, labels=["model"])
            for name, stats in models:
                histogram = getattr(stats, attribute)
                if any(histogram.counts):     # a series appears with its first observation
                    family.add_metric([name], histogram.buckets(), histogram.sum)
            yield family

    def worker_restarts(self) -> CounterMetricFamily:
        """How often the parent replaced each worker that died (server/workers.py), as it last wrote them."""
        family = CounterMetricFamily("cnnserve_worker_restarts", "Workers replaced after they died, by worker index",
                                     labels=["worker"])
        try:
            restarts = json.loads((self.shared_dir / RESTARTS_FILE).read_text())
        except (OSError, ValueError):       # none replaced yet
            restarts = {}
        for worker, count in sorted(restarts.items()):
            family.add_metric([worker], count)
        return family

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        start_http_server(port, addr=host, registry=self.registry)


def sample_value(exposition: str, name: str, **labels: str) -> float:
    """The value of one sample (e.g. `cnnserve_batch_size_count`) in a scrape of these series, 0 when absent.
    The server never reads its own series; this is for those who scrape it: the benchmarks and the tests."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0
