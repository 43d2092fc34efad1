"""The inference server: ONNX Runtime behind a dynamic batcher and one protocol-neutral data plane, served
as cnnserve.v1 and KServe v2 over gRPC (with health and reflection) and KServe v2 over HTTP, with the
feature-map explorer page on the HTTP port and Prometheus metrics. `python -m server` starts it."""
