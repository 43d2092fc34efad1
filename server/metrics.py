"""Prometheus metrics, served over HTTP on `--metrics-port` (text format at /metrics), and the per-model
totals that KServe v2 `ModelStatistics` reports."""
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.parser import text_string_to_metric_families

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class ModelStats:
    """Per-model totals in the shape of Triton's ModelStatistics (KServe v2 `ModelStatistics`)."""
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_ns: int = 0
    compute_ns: int = 0          # summed over the requests (a batch's compute counts for each)
    inference_count: int = 0     # images
    execution_count: int = 0     # ONNX Runtime runs
    last_inference_ms: int = 0   # wall clock, ms since the epoch


class Metrics:
    def __init__(self):
        self.stats: defaultdict[str, ModelStats] = defaultdict(ModelStats)
        self._stats_lock = threading.Lock()
        self._children: dict[tuple, object] = {}
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("cnnserve_requests", "Classify requests by model and gRPC status code",
                                ["model", "code"], registry=r)
        self.latency = Histogram("cnnserve_request_latency_seconds", "Classify latency inside the server",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Histogram("cnnserve_queue_seconds", "Time a request waited for its batch",
                               ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.compute = Histogram("cnnserve_compute_seconds", "ONNX Runtime time per batch",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("cnnserve_batch_size", "Images per ONNX Runtime run",
                                    ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.in_flight = Gauge("cnnserve_in_flight_requests", "Classify requests being handled",
                               ["model"], registry=r)
        self._in_flight: dict[str, int] = {}     # counted on the event loop, read by the gauge when scraped

    def child(self, metric, *labels: str):
        """metric.labels(*labels), looked up once: prometheus_client's `labels` costs microseconds per call,
        several times per request. The label values are bounded (model names, status names)."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def started(self, model: str) -> None:
        """A request for `model` is being handled (a plain count: a Gauge's inc/dec takes a lock each time)."""
        count = self._in_flight.get(model)
        if count is None:
            self.in_flight.labels(model).set_function(lambda: self._in_flight[model])
            count = 0
        self._in_flight[model] = count + 1

    def finished(self, model: str) -> None:
        self._in_flight[model] -= 1

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        start_http_server(port, addr=host, registry=self.registry)

    def batch_observer(self, model: str):
        """A callback for the batcher: records one ONNX Runtime run."""
        def observe(size: int, seconds: float) -> None:
            self.child(self.batch_size, model).observe(size)
            self.child(self.compute, model).observe(seconds)
            with self._stats_lock:
                self.stats[model].execution_count += 1
        return observe

    def record(self, model: str, status: str, seconds: float, images: int = 0, queue_s: float = 0.0,
               compute_s: float = 0.0) -> None:
        """One finished inference request, whatever protocol carried it."""
        self.child(self.requests, model, status).inc()
        with self._stats_lock:
            stats = self.stats[model]
            if status == "OK":
                self.child(self.latency, model).observe(seconds)
                self.child(self.queue, model).observe(queue_s)
                stats.success_count += 1
                stats.success_ns += int(seconds * 1e9)
                stats.queue_ns += int(queue_s * 1e9)
                stats.compute_ns += int(compute_s * 1e9)
                stats.inference_count += images
                stats.last_inference_ms = int(time.time() * 1000)
            else:
                stats.fail_count += 1
                stats.fail_ns += int(seconds * 1e9)


def sample_value(exposition: str, name: str, **labels: str) -> float:
    """The value of one sample (e.g. `cnnserve_batch_size_count`) in Prometheus text, 0 when absent."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0
