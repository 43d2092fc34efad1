"""KServe v2 / Open Inference Protocol over HTTP/REST (`--http-port`), on the same data plane.

Starlette routes served by uvicorn on the server's event loop, beside the gRPC server, so HTTP
and gRPC share the models, the batchers and the metrics. JSON tensors and the binary-data extension (a JSON header of
`Inference-Header-Content-Length` bytes, then raw tensor bytes) both work, so `tritonclient.http`
and `curl` are both clients. Errors are `{"error": "..."}` with the HTTP status of `STATUS`.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import struct
import sys
from typing import TYPE_CHECKING

import numpy as np
import uvicorn
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cnnserve.spec import INPUT_NAME, LOGITS, parse_decimal
from server import tracing
from server.dataplane import RESPONSE_OVERHEAD_BYTES, DataPlane, EncodedImage, InferRequest, InferResult, PixelBatch
from server.errors import InvalidArgument, ResourceExhausted, ServiceError, Unimplemented
from server.http_guard import MAX_HEADER_BYTES, GuardedH11Protocol, HeaderLimit, TokenCheck, json_http_error
from server.kserve_protocol import (
    EXTENSIONS,
    NO_SHARED_MEMORY,
    PLATFORM,
    classification_strings,
    image_input,
    parse_version,
    repository_index,
    selected_outputs,
    serialize_bytes,
    served_versions,
    server_version,
    statistics,
    tensor_metadata,
)
from server.model_control import ModelControl
from server.security import SecurityOptions
from server.startup import StartupError

if TYPE_CHECKING:
    from server.app import ServerConfig

log = logging.getLogger(__name__)
STATUS = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 429,
          "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504, "CANCELLED": 499, "INTERNAL": 500, "UNIMPLEMENTED": 501}
HEADER_LENGTH = "Inference-Header-Content-Length"
# A JSON part costs ~30 bytes of Python objects per number once parsed; 64 images as JSON numbers
# are about 200 kB, so JSON beyond this is refused before parsing (binary tensors have no such cost).
MAX_JSON_BYTES = 4 * 2**20
# HTTP-only extensions (the explorer page uses them; docs/explorer.md): PNG/JPEG files as a
# BYTES input that the server fits to the model, the fitted pixels back as an output, float16 feature maps.
ENCODED_INPUT = "image_encoded"
FEATURE_DATATYPES = {"FP32": "<f4", "FP16": "<f2"}
INFER = tracing.http_route("POST", "/v2/models/{name}/infer")
VERSIONED_INFER = tracing.http_route("POST", "/v2/models/{name}/versions/{version}/infer")


def error_response(error: ServiceError) -> JSONResponse:
    log.warning("HTTP request refused (%s): %s", error.status, error.message)
    return JSONResponse({"error": error.message}, status_code=STATUS[error.status])


def guarded_endpoint(handler):
    """ServiceErrors become `{"error": ...}` with their status; anything else a logged 500."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ServiceError as error:
            return error_response(error)
        except Exception:  # the HTTP boundary: log the trace here, send the client a status
            log.exception("HTTP %s %s failed", request.method, request.url.path)
            return JSONResponse({"error": "internal server error; the server log has the details"}, status_code=500)
    return wrapped


class KServeHttp:
    def __init__(self, dataplane: DataPlane, max_body_bytes: int, control: ModelControl | None = None):
        self.dataplane = dataplane
        self.control = control              # what answers the repository extension (None: a harness that infers)
        self.max_body_bytes = max_body_bytes
        endpoint = guarded_endpoint
        model = "/v2/models/{name}"
        versioned = "/v2/models/{name}/versions/{version}"
        # {name:path}: a name with a '/' reaches the name check (INVALID_ARGUMENT), not a bare 404
        repository_model = "/v2/repository/models/{name:path}"
        routes = [Route("/v2/health/live", endpoint(self.live)), Route("/v2/health/ready", endpoint(self.ready)),
                  Route("/v2", endpoint(self.server_metadata)),
                  Route("/v2/repository/index", endpoint(self.repository_index), methods=["POST"]),
                  Route(repository_model + "/load", endpoint(self.load_model), methods=["POST"]),
                  Route(repository_model + "/unload", endpoint(self.unload_model), methods=["POST"]),
                  Route("/v2/models/stats", endpoint(self.model_stats)),     # every model's: before /v2/models/{name}
                  # the shared-memory extension's routes, so its clients learn why, not just "404"
                  *(Route(f"/v2/{kind}/{path}", endpoint(self.shared_memory), methods=["GET", "POST"])
                    for kind in ("systemsharedmemory", "cudasharedmemory")
                    for path in ("status", "region/{region:path}/status", "register", "unregister",
                                 "region/{region:path}/register", "region/{region:path}/unregister"))]
        for path in (model, versioned):
            routes += [Route(path, endpoint(self.model_metadata)), Route(path + "/ready", endpoint(self.model_ready)),
                       Route(path + "/config", endpoint(self.model_config)),
                       Route(path + "/stats", endpoint(self.model_stats)),
                       Route(path + "/infer", endpoint(self.infer), methods=["POST"])]
        self.routes = routes

    def model(self, request: Request):
        return self.dataplane.model(request.path_params["name"], parse_version(request.path_params.get("version", "")))

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        ready = self.dataplane.ready()
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "cnnserve", "version": server_version(), "extensions": EXTENSIONS})

    async def model_metadata(self, request: Request) -> Response:
        model = self.model(request)
        inputs, outputs = tensor_metadata(model)
        tensors = lambda items: [{"name": n, "datatype": d, "shape": s} for n, d, s in items]
        return JSONResponse({"name": model.name, "versions": served_versions(self.dataplane, model.name),
                             "platform": PLATFORM,
                             "inputs": tensors(inputs), "outputs": tensors(outputs),
                             "parameters": self.model_parameters(model)})

    def model_parameters(self, model) -> dict:
        """What a client cannot learn from the tensors: where it runs, whether its answers mean anything, and
        how large a response may be (HTTP only; the gRPC ModelMetadata message has no such field)."""
        meta = model.version.metadata
        parameters = {"provider": model.runtime.provider, "trained": meta.trained,
                      "max_response_bytes": self.dataplane.max_response_bytes,
                      **{f"response_bytes_{part}": size for part, size in RESPONSE_OVERHEAD_BYTES.items()}}
        if meta.test_acc is not None:
            parameters["test_acc"] = meta.test_acc
        return parameters

    async def model_ready(self, request: Request) -> Response:
        self.model(request)                   # NotFound / Unavailable with the reason when not ready
        return JSONResponse({"name": request.path_params["name"], "ready": True})

    async def model_config(self, request: Request) -> Response:
        config = self.model(request).version.config
        return JSONResponse(json_format.MessageToDict(config, preserving_proto_field_name=True))

    async def shared_memory(self, request: Request) -> Response:
        raise Unimplemented(NO_SHARED_MEMORY)

    async def model_stats(self, request: Request) -> Response:
        params = request.path_params
        return JSONResponse(statistics(self.dataplane, params.get("name", ""), params.get("version", "")))

    async def repository_index(self, request: Request) -> Response:
        ready = (await self.json_object(request)).get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidArgument("ready must be true or false")
        return JSONResponse(await repository_index(self.control, ready))

    async def load_model(self, request: Request) -> Response:
        await self.control.load(request.path_params["name"], self.parameters(await self.json_object(request)))
        return Response()

    async def unload_model(self, request: Request) -> Response:
        await self.control.unload(request.path_params["name"], self.parameters(await self.json_object(request)))
        return Response()

    async def json_object(self, request: Request) -> dict:
        """A small JSON object body (the repository extension's), or {} for an empty one."""
        body = await self.body(request)
        if not body.strip():
            return {}
        if len(body) > MAX_JSON_BYTES:
            raise ResourceExhausted(f"the request body is {len(body):,} bytes, over the limit of {MAX_JSON_BYTES:,}")
        try:
            value = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise InvalidArgument("the request body must be a JSON object") from None
        if not isinstance(value, dict):
            raise InvalidArgument("the request body must be a JSON object")
        return value

    @staticmethod
    def parameters(body: dict) -> list[str]:
        parameters = body.get("parameters", {})
        if not isinstance(parameters, dict):
            raise InvalidArgument("parameters must be a JSON object")
        return list(parameters)

    async def body(self, request: Request) -> bytearray:
        """The request body, refused once it passes the message limit (never read whole first). One growing
        buffer, not a list of chunks joined at the end, which would hold the body twice."""
        body = bytearray()
        async for chunk in request.stream():
            if len(body) + len(chunk) > self.max_body_bytes:
                raise ResourceExhausted(f"the request body is over the server's limit of "
                                        f"{self.max_body_bytes / 2**20:.0f} MiB (--max-message-mb)")
            body += chunk
        return body

    async def infer(self, request: Request) -> Response:
        endpoint = VERSIONED_INFER if "version" in request.path_params else INFER
        with tracing.request_span(endpoint, request.path_params["name"], request.headers) as trace:
            return await self.traced_infer(request, trace)

    async def traced_infer(self, request: Request, trace: tracing.Trace | tracing.NoTrace) -> Response:
        body = await self.body(request)
        header, binary = split_body(body, request.headers.get(HEADER_LENGTH))
        model = self.model(request)
        inputs = header.get("inputs")
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise InvalidArgument(f"inputs must be a list of one tensor, {INPUT_NAME!r} or {ENCODED_INPUT!r}")
        batch, images = model_input(inputs[0], binary, model)
        requested = requested_outputs(header.get("outputs"))
        features, classification = selected_outputs([(n, k) for n, k, _, _ in requested if n != INPUT_NAME or k])
        result = await trace.infer(self.dataplane, InferRequest(
            model=model.name, version=model.version.version, batch=batch, images=images, features=features,
            outputs_named=True, top_k=classification, top_k_field="classification",
            feature_itemsize=feature_itemsize(requested, features),
            caller=f"http:{request.client.host}:{request.client.port}" if request.client else "http"))
        outputs, blobs = [], []
        for name, k, as_binary, datatype in requested:
            if k:
                values, datatype = classification_strings(result, k), "BYTES"
                raw = serialize_bytes(values)
            elif name == INPUT_NAME:              # the pixels the model received (fitted, for image_encoded)
                values, datatype = result.pixels, "UINT8"
                raw = values.tobytes()
            else:
                values = result.outputs[name].astype(FEATURE_DATATYPES[datatype], copy=False)
                raw = values.tobytes()
            tensor = {"name": name, "datatype": datatype, "shape": list(values.shape)}
            if as_binary:
                tensor["parameters"] = {"binary_data_size": len(raw)}
                blobs.append(raw)
            else:
                tensor["data"] = values.reshape(-1).tolist()
            outputs.append(tensor)
        response = {"model_name": result.model, "model_version": str(result.version), "outputs": outputs,
                    "parameters": timing_parameters(result)}
        if "id" in header:
            response["id"] = str(header["id"])[:100]
        text = json.dumps(response).encode()
        if not blobs:
            return Response(text, media_type="application/json")
        return Response(text + b"".join(blobs), media_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(len(text))})


def split_body(body: bytearray, header_length: str | None) -> tuple[dict, memoryview]:
    """The JSON header and the binary part that follows it (binary-data extension), the latter a view of
    `body`, not a copy."""
    if header_length is None:
        json_part, binary = body, memoryview(b"")
    else:
        length = parse_decimal(header_length)
        if length is None or length > len(body):
            raise InvalidArgument(f"{HEADER_LENGTH} must be the byte length of the JSON part, at most the body's "
                                  f"{len(body):,} bytes")
        json_part, binary = bytes(memoryview(body)[:length]), memoryview(body)[length:]
    if len(json_part) > MAX_JSON_BYTES:
        raise ResourceExhausted(f"the JSON part is {len(json_part):,} bytes, over the limit of {MAX_JSON_BYTES:,}; "
                                f"send tensors as binary data ({HEADER_LENGTH})")
    try:
        header = json.loads(json_part)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidArgument(f"the request body is not valid JSON ({str(error)[:100]})") from None
    except RecursionError:      # the parser recurses once per nesting level
        raise InvalidArgument(f"the request body's JSON nests deeper than the parser allows (about "
                              f"{sys.getrecursionlimit():,} levels)") from None
    if not isinstance(header, dict):
        raise InvalidArgument("the request body must be a JSON object with 'inputs'")
    return header, binary


def parameters_of(tensor: dict, where: str) -> dict:
    """A tensor's `parameters` object ({} when absent)."""
    parameters = tensor.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InvalidArgument(f"{where}: parameters must be a JSON object")
    return parameters


def input_tensor(tensor: dict, binary: memoryview) -> PixelBatch:
    shape, datatype = tensor.get("shape"), tensor.get("datatype")
    if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
        raise InvalidArgument(f"input {INPUT_NAME!r}: shape must be a list of integers")
    size = parameters_of(tensor, f"input {INPUT_NAME!r}").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != len(binary):
            raise InvalidArgument(f"input {INPUT_NAME!r}: binary_data_size {str(size)[:20]} does not match the "
                                  f"{len(binary):,} bytes after the JSON header")
        return image_input(str(tensor.get("name"))[:200], str(datatype)[:100], shape, binary)
    try:
        values = np.asarray(tensor.get("data"), dtype=np.int64).reshape(-1)
    except (TypeError, ValueError, OverflowError):
        raise InvalidArgument(f"input {INPUT_NAME!r}: data must be a (nested) list of integers") from None
    return image_input(str(tensor.get("name"))[:200], str(datatype)[:100], shape, None, values)


def model_input(tensor: dict, binary: memoryview, model) -> tuple[PixelBatch | None, list[EncodedImage]]:
    """The `image` pixels as sent, or the `image_encoded` PNG/JPEG files, which the data plane fits to the
    model's input as it does cnnserve.v1's encoded images, so a browser can send a file as it is (and ask
    for the `image` output to see what the model saw)."""
    if tensor.get("name") != ENCODED_INPUT:
        return input_tensor(tensor, binary), []
    return None, [EncodedImage(data) for data in encoded_files(tensor, binary, model.batcher.options.max_batch_size)]


def encoded_files(tensor: dict, binary: memoryview, max_files: int) -> list[bytes]:
    """The elements of a BYTES tensor sent as binary data: each a 4-byte little-endian length, then the file."""
    shape, size = tensor.get("shape"), parameters_of(tensor, f"input {ENCODED_INPUT!r}").get("binary_data_size")
    if tensor.get("datatype") != "BYTES" or not isinstance(shape, list) or len(shape) != 1 or \
            not isinstance(shape[0], int) or not 1 <= shape[0] <= max_files:
        raise InvalidArgument(f"input {ENCODED_INPUT!r} must be datatype BYTES, shape [N], 1 <= N <= {max_files}")
    if size is None or size != len(binary):
        raise InvalidArgument(f"input {ENCODED_INPUT!r} must be sent as binary data: binary_data_size equal to the "
                              f"{len(binary):,} bytes after the JSON header")
    files, offset = [], 0
    while offset + 4 <= len(binary) and len(files) < shape[0]:
        (length,) = struct.unpack_from("<I", binary, offset)
        files.append(bytes(binary[offset + 4: offset + 4 + length]))
        offset += 4 + length
    if len(files) != shape[0] or offset != len(binary):
        raise InvalidArgument(f"input {ENCODED_INPUT!r}: the binary data does not hold {shape[0]} length-prefixed "
                              f"files and nothing else")
    return files


def feature_itemsize(requested: list[tuple[str, int, bool, str]], features: list[str]) -> int:
    """Bytes per value of the largest feature map datatype asked for, for the data plane's response-size check."""
    return max((np.dtype(FEATURE_DATATYPES[d]).itemsize for n, _, _, d in requested if n in features), default=4)


def timing_parameters(result: InferResult) -> dict:
    """Where the time went, as response parameters: decoding (with fitting), waiting for a batch, ONNX Runtime."""
    return {"decode_ms": round(result.decode_s * 1e3, 3), "queue_ms": round(result.queue_s * 1e3, 3),
            "compute_ms": round(result.compute_s * 1e3, 3), "batch_size": result.batch_size}


def requested_outputs(outputs) -> list[tuple[str, int, bool, str]]:
    """(name, classification count or 0, binary, FP32 or FP16) per requested output; none requested: the logits,
    as JSON. `image` is the model's input as it received it."""
    if outputs is None:
        return [(LOGITS, 0, False, "FP32")]
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise InvalidArgument("outputs must be a list of {\"name\": ...} objects")
    requested = []
    for output in outputs:
        parameters = parameters_of(output, "each output")
        k = parameters.get("classification", 0)
        if not isinstance(k, int):
            raise InvalidArgument("the classification parameter must be an integer")
        datatype = parameters.get("datatype", "FP32")
        if not isinstance(datatype, str) or datatype not in FEATURE_DATATYPES:
            raise InvalidArgument(f"the datatype parameter must be one of {', '.join(FEATURE_DATATYPES)}")
        requested.append((str(output.get("name"))[:200], k, bool(parameters.get("binary_data", False)), datatype))
    return requested


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside the cnnserve process, which owns SIGTERM and SIGINT (it drains before stopping)."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class HttpFront:
    """uvicorn on the server's event loop, its socket bound before the models load so a busy port fails at once."""

    def __init__(self, config: ServerConfig, security: SecurityOptions, routes: list):
        host, port = config.host, config.http_port
        try:
            self.socket = socket.create_server((host, port), reuse_port=config.slot.reuse_port)   # --workers share it
            # accepted connections inherit it: no Nagle wait on a response's separate writes
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as error:
            raise StartupError(f"--http-port {port}: cannot listen on {host}:{port} ({error.strerror or error})") from None
        tls = {} if not security.tls else {
            "ssl_certfile": str(security.tls_cert), "ssl_keyfile": str(security.tls_key),
            **({"ssl_ca_certs": str(security.tls_client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
               if security.tls_client_ca else {})}
        app = Starlette(routes=routes, exception_handlers={HTTPException: json_http_error},
                        middleware=[Middleware(HeaderLimit),
                                    Middleware(TokenCheck, token=security.token, open_names=security.open_without_token)])
        protocol = GuardedH11Protocol.limited(config.http_header_timeout_s, config.http_max_connections)
        self.server = EmbeddedServer(uvicorn.Config(
            app, log_level="warning", access_log=False, timeout_keep_alive=30, timeout_graceful_shutdown=10,
            http=protocol, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            limit_concurrency=config.http_max_connections, **tls))
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        """Start serving on the running loop."""
        self.task = asyncio.get_running_loop().create_task(self.server.serve(sockets=[self.socket]), name="http")

    async def stop(self, timeout: float) -> None:
        self.server.should_exit = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
