"""The counts behind /metrics and ModelStatistics, alone: histograms, and totals shared between worker processes."""
import asyncio
import logging

from prometheus_client import generate_latest

from server.metrics import Histogram, Metrics, sample_value


def test_histograms_count_a_value_on_a_bound_in_that_bound_and_export_cumulatively():
    histogram = Histogram((0.001, 0.01))
    for value in (0.001, 0.005, 0.5):
        histogram.observe(value)
    assert histogram.buckets() == [("0.001", 1), ("0.01", 2), ("+Inf", 3)] and histogram.sum == 0.506


def test_prometheus_series_show_the_counts():
    metrics = Metrics()
    metrics.started("m")
    metrics.batch_observer("m")(3, 0.002)
    metrics.record("m", "OK", 0.004, images=3, queue_s=0.001, compute_s=0.002)
    metrics.record("m", "NOT_FOUND", 0.0001)
    text = generate_latest(metrics.registry).decode()      # what a scrape of /metrics gets
    assert sample_value(text, "cnnserve_requests_total", model="m", code="OK") == 1
    assert sample_value(text, "cnnserve_requests_total", model="m", code="NOT_FOUND") == 1
    assert sample_value(text, "cnnserve_in_flight_requests", model="m") == 1
    assert sample_value(text, "cnnserve_request_latency_seconds_bucket", model="m", le="0.005") == 1
    assert sample_value(text, "cnnserve_batch_size_sum", model="m") == 3


def test_a_worker_answers_with_every_workers_totals(tmp_path):
    workers = [Metrics(tmp_path, worker=i) for i in range(3)]
    for i, metrics in enumerate(workers):
        metrics.record("m", "OK", 0.001, images=i + 1)
        metrics.batch_observer("m")(i + 1, 0.001)
    workers[2].record("m", "INVALID_ARGUMENT", 0.001)
    for metrics in workers[1:]:
        metrics.publish()
    workers[0].record("m", "OK", 0.001, images=10)       # its own counts are live, not as last published
    totals = workers[0].totals("m")
    assert (totals.success_count, totals.fail_count, totals.inference_count, totals.execution_count) == (4, 1, 16, 3)
    assert workers[0].totals("other").success_count == 0


def test_a_worker_whose_directory_is_gone_keeps_serving_its_own_totals(tmp_path, caplog):
    metrics = Metrics(tmp_path / "gone", worker=0)
    metrics.record("m", "OK", 0.001, images=2)
    with caplog.at_level(logging.WARNING):
        asyncio.run(asyncio.wait_for(metrics.publish_forever(), 5))      # returns: no exception escapes
    assert "cannot share statistics" in caplog.text
    assert metrics.totals("m").inference_count == 2
