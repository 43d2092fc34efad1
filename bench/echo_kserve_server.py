"""Bare KServe v2 floors for perf_analyzer: a grpc.aio or an HTTP (uvicorn + Starlette, cnnserve's HTTP stack) server
that answers every ModelInfer with the same prebuilt logits answer, without parsing the request: what the Python
front end alone costs per call, measured by the same load generator as the servers (`bench/perf_vs_triton.py`).

    python bench/echo_kserve_server.py --protocol grpc|http [--port 0]

Prints its port, then serves until SIGTERM. The gRPC one is `echo_aio_server.py` with KServe's method names: a
generic bytes-in, bytes-out ModelInfer handler that returns the request's bytes (no protobuf parse or build per call;
a ModelInferRequest reads as a ModelInferResponse with the same model name, version and id, which perf_analyzer
matches, its input as the output), plus the answers perf_analyzer asks for before and between its windows
(ServerLive/Ready, ServerMetadata, ModelMetadata, ModelConfig, ModelReady, ModelStatistics with zero counts). The
HTTP one reads the whole body, parses its JSON header for the request id (perf_analyzer matches it) and returns a
binary-data answer (a JSON header, then 40 bytes of logits), on uvicorn's h11 protocol and the default asyncio
loop, as `server/http.py`. Any model name answers, as a UINT8 [1, 28, 28] -> FP32 [10] model with up to 64 images
per request; the HTTP answer is always one image's logits (perf_analyzer does not check it), so use it for
single-image requests. Imports nothing from the project.
"""
import argparse
import asyncio
import json
import signal
import socket

SHAPE_IN, SHAPE_OUT, MAX_BATCH = [1, 28, 28], [10], 64
LOGITS = bytes(4 * SHAPE_OUT[0])


def metadata(name: str) -> dict:
    return {"name": name, "versions": ["1"], "platform": "echo",
            "inputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, *SHAPE_IN]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, *SHAPE_OUT]}]}


def config(name: str) -> dict:
    return {"name": name, "platform": "echo", "max_batch_size": MAX_BATCH,
            "input": [{"name": "image", "data_type": "TYPE_UINT8", "dims": SHAPE_IN}],
            "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": SHAPE_OUT}]}


async def serve_grpc(port: int) -> tuple[object, int]:
    import grpc
    from google.protobuf import json_format
    from tritonclient.grpc import service_pb2 as pb

    async def infer(request: bytes, context) -> bytes:
        return request

    def stats(request, context):
        name = request.name or "echo"
        return pb.ModelStatisticsResponse(model_stats=[pb.ModelStatistics(name=name, version="1")])

    def config_of(request, context):
        return json_format.ParseDict({"config": config(request.name)}, pb.ModelConfigResponse())

    control = {"ServerLive": (lambda r, c: pb.ServerLiveResponse(live=True), pb.ServerLiveRequest),
               "ServerReady": (lambda r, c: pb.ServerReadyResponse(ready=True), pb.ServerReadyRequest),
               "ModelReady": (lambda r, c: pb.ModelReadyResponse(ready=True), pb.ModelReadyRequest),
               "ServerMetadata": (lambda r, c: pb.ServerMetadataResponse(name="echo", version="0"),
                                  pb.ServerMetadataRequest),
               "ModelMetadata": (lambda r, c: json_format.ParseDict(metadata(r.name), pb.ModelMetadataResponse()),
                                 pb.ModelMetadataRequest),
               "ModelConfig": (config_of, pb.ModelConfigRequest),
               "ModelStatistics": (stats, pb.ModelStatisticsRequest)}
    handlers = {name: grpc.unary_unary_rpc_method_handler(
        fn, request_deserializer=request.FromString, response_serializer=lambda m: m.SerializeToString())
        for name, (fn, request) in control.items()}
    handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(infer)    # bytes in, bytes out
    limit = 64 * 2**20
    server = grpc.aio.server(options=[("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers)])
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound


async def serve_http(port: int) -> tuple[object, int]:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def answer(request_id: str) -> Response:
        header = json.dumps({"id": request_id, "model_name": "echo", "model_version": "1", "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [1, *SHAPE_OUT],
             "parameters": {"binary_data_size": len(LOGITS)}}]}).encode()
        return Response(header + LOGITS, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(len(header))})

    async def infer(request: Request) -> Response:
        body = await request.body()
        length = request.headers.get("inference-header-content-length")
        return answer(str(json.loads(body[:int(length)] if length else body).get("id", "")))

    def name(request: Request) -> str:
        return request.path_params["name"]

    async def stats(request: Request) -> Response:
        return JSONResponse({"model_stats": [{"name": name(request), "version": "1", "inference_count": 0,
                                              "execution_count": 0, "inference_stats": {}}]})
    ok = Response(status_code=200)
    model = "/v2/models/{name}"
    routes = [Route("/v2/health/live", lambda r: ok), Route("/v2/health/ready", lambda r: ok),
              Route("/v2", lambda r: JSONResponse({"name": "echo", "version": "0", "extensions": []})),
              Route(model, lambda r: JSONResponse(metadata(name(r)))), Route(model + "/ready", lambda r: ok),
              Route(model + "/config", lambda r: JSONResponse(config(name(r)))), Route(model + "/stats", stats),
              Route(model + "/infer", infer, methods=["POST"]),
              Route(model + "/versions/{version}/infer", infer, methods=["POST"])]
    sock = socket.create_server(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=routes), http="h11", log_level="warning",
                                           access_log=False, timeout_keep_alive=30))
    server.capture_signals = lambda: __import__("contextlib").nullcontext()    # SIGTERM is ours
    server.task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    return server, sock.getsockname()[1]


async def main_async(protocol: str, port: int) -> None:
    server, bound = await (serve_grpc if protocol == "grpc" else serve_http)(port)
    print(bound, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    if protocol == "grpc":
        await server.stop(1)
    else:
        server.should_exit = True
        await server.task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=["grpc", "http"], required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(main_async(args.protocol, args.port))


if __name__ == "__main__":
    main()
