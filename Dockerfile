# The serving image: ONNX Runtime, the gRPC and HTTP fronts and the default model repository; no torch.
#
#   buildah bud --format docker -t cnnserve .        (or: docker build -t cnnserve .)
#   podman run --rm -p 9000:9000 -p 8080:8080 cnnserve [server flags, e.g. --workers auto]
#
# Models that ship as weights only (model_repository/*/1/model.onnx not in git) are in the image only
# if they were built before (`python -m export.defaults --missing`, or one `python -m server` on the host).
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
# Only the packages the server runs (cnnserve, server) and the small client (`python -m client.cli health`
# for probes), with the serving extra (ONNX Runtime, grpcio, the HTTP stack, prometheus-client, OpenTelemetry) and
# the OTLP exporter for `--trace otlp`; no torch.
COPY cnnserve cnnserve
COPY client client
COPY server server
RUN /opt/venv/bin/pip install --no-cache-dir '.[serve,otlp]' \
 && /opt/venv/bin/pip uninstall -y pip setuptools wheel

FROM ${BASE}
COPY --from=build /opt/venv /opt/venv
COPY model_repository /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CNNSERVE_HOST=0.0.0.0 \
    CNNSERVE_PORT=9000 \
    CNNSERVE_HTTP_PORT=8080 \
    CNNSERVE_METRICS_PORT=8002 \
    CNNSERVE_MODEL_REPOSITORY=/models
# gRPC (cnnserve.v1 and KServe v2), KServe v2 HTTP and the explorer, Prometheus metrics
EXPOSE 9000 8080 8002
USER 1000:1000
WORKDIR /tmp
# KServe v2 readiness: every model loaded and warm (the port of CNNSERVE_HTTP_PORT).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['CNNSERVE_HTTP_PORT']}/v2/health/ready\", timeout=2)"]
# Arguments after the image name go to the server; SIGTERM drains it (--grace seconds).
ENTRYPOINT ["python", "-m", "server"]
