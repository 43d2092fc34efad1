"""The counts behind /metrics and ModelStatistics, alone: histograms, and totals shared between worker processes."""
import asyncio
import logging

from prometheus_client import generate_latest

from server.kserve_protocol import version_statistics
from server.metrics import Histogram, Metrics, StageTimes, sample_value


def test_histograms_count_a_value_on_a_bound_in_that_bound_and_export_cumulatively():
    histogram = Histogram((0.001, 0.01))
    for value in (0.001, 0.005, 0.5):
        histogram.observe(value)
    assert histogram.buckets() == [("0.001", 1), ("0.01", 2), ("+Inf", 3)] and histogram.sum == 0.506


def test_prometheus_series_show_the_counts():
    metrics = Metrics()
    metrics.started("m")
    metrics.batch_observer("m", 1)(3, 0.0001, 0.002, 0.0001)
    metrics.record("m", 1, "OK", 0.004, images=3, times=StageTimes(0.001, 0.0002, 0.002, 0.0001))
    metrics.record("m", 0, "NOT_FOUND", 0.0001)
    text = generate_latest(metrics.registry).decode()      # what a scrape of /metrics gets
    assert sample_value(text, "cnnserve_requests_total", model="m", code="OK") == 1
    assert sample_value(text, "cnnserve_requests_total", model="m", code="NOT_FOUND") == 1
    assert sample_value(text, "cnnserve_in_flight_requests", model="m") == 1
    assert sample_value(text, "cnnserve_request_latency_seconds_bucket", model="m", le="0.005") == 1
    assert sample_value(text, "cnnserve_batch_size_sum", model="m") == 3
    assert sample_value(text, "cnnserve_compute_seconds_sum", model="m") == 0.002
    assert sample_value(text, "cnnserve_queue_seconds_sum", model="m") == 0.001


def test_stages_count_once_per_request_and_batch_stats_once_per_run():
    """Two requests ran together in one run of 4 images, then one alone in a run of 1: the run's stages count in
    full for each request in it (as Triton counts a batch's), once per run in batch_stats."""
    metrics = Metrics()
    observe = metrics.batch_observer("m", 2)
    observe(4, 0.001, 0.010, 0.002)
    for images in (1, 3):
        metrics.started("m")
        metrics.record("m", 2, "OK", 0.020, images, StageTimes(queue_s=0.005, compute_input_s=0.0015 + 0.001,
                                                               compute_infer_s=0.010, compute_output_s=0.002))
    observe(1, 0.0, 0.003, 0.0005)
    metrics.started("m")
    metrics.record("m", 2, "OK", 0.008, 1, StageTimes(0.004, 0.0001, 0.003, 0.0005))
    metrics.started("m")
    metrics.record("m", 2, "INVALID_ARGUMENT", 0.0002)

    stats = version_statistics("m", metrics.totals("m", served=2)[2])
    inference = stats["inference_stats"]
    assert (stats["version"], stats["inference_count"], stats["execution_count"]) == ("2", 5, 2)
    assert inference["success"] == {"count": 3, "ns": 48_000_000} and inference["fail"] == {"count": 1, "ns": 200_000}
    assert [inference[stage]["count"] for stage in ("queue", "compute_input", "compute_infer", "compute_output")] == [3] * 4
    assert inference["compute_infer"]["ns"] == 23_000_000 and inference["queue"]["ns"] == 14_000_000
    assert inference["cache_hit"] == inference["cache_miss"] == {"count": 0, "ns": 0}
    assert stats["batch_stats"] == [
        {"batch_size": 1, "compute_input": {"count": 1, "ns": 0}, "compute_infer": {"count": 1, "ns": 3_000_000},
         "compute_output": {"count": 1, "ns": 500_000}},
        {"batch_size": 4, "compute_input": {"count": 1, "ns": 1_000_000}, "compute_infer": {"count": 1, "ns": 10_000_000},
         "compute_output": {"count": 1, "ns": 2_000_000}}]
    assert stats["last_inference"] > 0


def test_truncated_stages_never_add_up_to_more_than_the_request():
    """Each duration is truncated to whole ns, so the four stages of a request fitting in its time stay within it
    (rounded, 1,000,000.6 ns four times would be 4,000,004 ns of a 4,000,002 ns request)."""
    metrics = Metrics()
    metrics.record("m", 0, "OK", 0.0040000024, 1, StageTimes(*[0.0010000006] * 4))
    totals = metrics.totals("m", served=0)[0]
    stages = totals.queue_ns + totals.compute_input_ns + totals.compute_infer_ns + totals.compute_output_ns
    assert stages <= totals.success_ns


def test_a_worker_answers_with_every_workers_totals(tmp_path):
    workers = [Metrics(tmp_path, worker=i) for i in range(3)]
    for i, metrics in enumerate(workers):
        metrics.started("m")
        metrics.batch_observer("m", 1)(i % 2 + 1, 0.001, 0.002, 0.003)
        metrics.record("m", 1, "OK", 0.01, i % 2 + 1, StageTimes(0.001, 0.001, 0.002, 0.003))
    workers[2].record("m", 1, "INVALID_ARGUMENT", 0.001)
    for metrics in workers[1:]:
        metrics.publish()
    workers[0].batch_observer("m", 1)(10, 0.001, 0.002, 0.003)    # its own counts are live, not as last published
    workers[0].record("m", 1, "OK", 0.01, images=10, times=StageTimes(0.001, 0.001, 0.002, 0.003))
    totals = workers[0].totals("m", served=1)[1]
    assert (totals.success_count, totals.fail_count, totals.inference_count, totals.execution_count) == (4, 1, 14, 4)
    assert (totals.compute_infer_ns, totals.last_inference_ms > 0) == (8_000_000, True)
    assert {size: batch.count for size, batch in totals.batches.items()} == {1: 2, 2: 1, 10: 1}
    assert totals.batches[1].compute_output_ns == 6_000_000
    assert workers[0].totals("other", served=1)[1].success_count == 0


def test_workers_serving_different_versions_are_counted_apart(tmp_path):
    """Workers that serve different versions (one has rolled out version 2, one has not yet): each version's
    counts are its own."""
    old, new, unloaded = Metrics(tmp_path, worker=0), Metrics(tmp_path, worker=1), Metrics(tmp_path, worker=2)
    for metrics, version in ((old, 1), (new, 2)):
        metrics.started("m")
        metrics.batch_observer("m", version)(version, 0.001, 0.002, 0.003)
        metrics.record("m", version, "OK", 0.01, version, StageTimes())
    unloaded.started("m")                       # a request before that worker had loaded the model
    unloaded.record("m", 0, "UNAVAILABLE", 0.001)
    for metrics in (new, unloaded):
        metrics.publish()
    by_version = old.totals("m", served=1)
    assert sorted(by_version) == [1, 2]
    assert [(t.version, t.success_count, t.fail_count, t.inference_count) for t in by_version.values()] == [
        (1, 1, 1, 1), (2, 1, 0, 2)]


def test_one_process_serving_two_versions_counts_each_apart():
    metrics = Metrics()
    for version, images in ((1, 2), (2, 5), (2, 1)):
        metrics.started("m")
        metrics.batch_observer("m", version)(images, 0.001, 0.002, 0.003)
        metrics.record("m", version, "OK", 0.01, images, StageTimes())
        metrics.finished("m")
    metrics.record("m", 0, "NOT_FOUND", 0.001)            # a version not served: counted for the default one
    by_version = metrics.totals("m", served=2)
    assert [(t.version, t.success_count, t.fail_count, t.inference_count, t.execution_count)
            for _, t in sorted(by_version.items())] == [(1, 1, 0, 2, 1), (2, 2, 1, 6, 2)]
    text = generate_latest(metrics.registry).decode()      # Prometheus: one series per model, every version
    assert sample_value(text, "cnnserve_requests_total", model="m", code="OK") == 3


def test_a_worker_whose_directory_is_gone_keeps_serving_its_own_totals(tmp_path, caplog):
    metrics = Metrics(tmp_path / "gone", worker=0)
    metrics.record("m", 1, "OK", 0.001, images=2)
    with caplog.at_level(logging.WARNING):
        asyncio.run(asyncio.wait_for(metrics.publish_forever(), 5))      # returns: no exception escapes
    assert "cannot share statistics" in caplog.text
    assert metrics.totals("m", served=1)[1].inference_count == 2
