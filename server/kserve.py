"""KServe v2 / Open Inference Protocol over gRPC (`inference.GRPCInferenceService`), on the data plane.

The messages and service stubs are the ones `tritonclient` ships (`tritonclient.grpc.service_pb2`),
so Triton's clients, perf_analyzer and anything else that speaks the protocol can call cnnserve.
What the protocol means whatever carries it (versions, the `image` input, outputs, the
classification extension, statistics, the repository extension) is in `server/kserve_protocol.py`
and `server/model_control.py`, shared with HTTP.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator

from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc

from cnnserve.spec import INPUT_NAME, LOGITS
from server import tracing
from server.dataplane import DataPlane, InferRequest
from server.errors import InvalidArgument, ServiceError, Unimplemented
from server.grpc_common import INTERNAL_ERROR, deadline_of, grpc_errors, parse_message
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
from server.model_control import ModelControl, check_repository

SERVICE_DESCRIPTOR = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
MODEL_INFER = tracing.grpc_method(SERVICE_DESCRIPTOR.full_name, "ModelInfer")
MODEL_STREAM_INFER = tracing.grpc_method(SERVICE_DESCRIPTOR.full_name, "ModelStreamInfer")
# Requests one ModelStreamInfer stream may have read and not yet answered: enough for a stream of one-image
# requests to fill a run of the default max_batch_size, while what a stream holds (each of these requests
# and its answer, each up to --max-message-mb) stays bounded.
STREAM_IN_FLIGHT = 64

log = logging.getLogger(__name__)


class KServeGrpcService(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, control: ModelControl | None = None):
        """`control`: what answers the repository extension (None: a harness that only infers)."""
        self.dataplane = dataplane
        self.control = control
        self._stream_numbers = itertools.count(1)     # a stream is a caller of its own for fair queuing

    @grpc_errors
    async def ServerLive(self, request, context):
        return kpb.ServerLiveResponse(live=True)

    @grpc_errors
    async def ServerReady(self, request, context):
        return kpb.ServerReadyResponse(ready=self.dataplane.ready())

    @grpc_errors
    async def ModelReady(self, request, context):
        return kpb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, parse_version(request.version)))

    @grpc_errors
    async def ServerMetadata(self, request, context):
        return kpb.ServerMetadataResponse(name="cnnserve", version=server_version(), extensions=EXTENSIONS)

    @grpc_errors
    async def ModelMetadata(self, request, context):
        model = self.dataplane.model(request.name, parse_version(request.version))
        inputs, outputs = tensor_metadata(model)
        tensor = kpb.ModelMetadataResponse.TensorMetadata
        return kpb.ModelMetadataResponse(
            name=model.name, versions=served_versions(self.dataplane, model.name), platform=PLATFORM,
            inputs=[tensor(name=n, datatype=d, shape=s) for n, d, s in inputs],
            outputs=[tensor(name=n, datatype=d, shape=s) for n, d, s in outputs])

    @grpc_errors
    async def ModelConfig(self, request, context):
        model = self.dataplane.model(request.name, parse_version(request.version))
        return kpb.ModelConfigResponse(config=model.version.config)

    @grpc_errors
    async def RepositoryIndex(self, request, context):
        check_repository(request.repository_name)
        return json_format.ParseDict({"models": await repository_index(self.control, request.ready)},
                                     kpb.RepositoryIndexResponse())

    @grpc_errors
    async def RepositoryModelLoad(self, request, context):
        await self.control.load(request.model_name, request.parameters.keys(), request.repository_name)
        return kpb.RepositoryModelLoadResponse()

    @grpc_errors
    async def RepositoryModelUnload(self, request, context):
        await self.control.unload(request.model_name, request.parameters.keys(), request.repository_name)
        return kpb.RepositoryModelUnloadResponse()

    @grpc_errors
    async def ModelStatistics(self, request, context):
        return json_format.ParseDict(statistics(self.dataplane, request.name, request.version),
                                     kpb.ModelStatisticsResponse())

    @grpc_errors
    async def SystemSharedMemoryStatus(self, request, context):
        raise Unimplemented(NO_SHARED_MEMORY)

    SystemSharedMemoryRegister = SystemSharedMemoryUnregister = SystemSharedMemoryStatus
    CudaSharedMemoryStatus = CudaSharedMemoryRegister = CudaSharedMemoryUnregister = SystemSharedMemoryStatus

    @grpc_errors
    async def ModelInfer(self, request: kpb.ModelInferRequest, context) -> kpb.ModelInferResponse:
        response = kpb.ModelInferResponse()
        with tracing.request_span(MODEL_INFER, request.model_name, context) as trace:
            await self._infer(request, deadline_of(context), context.peer(), response, trace)
        return response

    @grpc_errors
    async def ModelStreamInfer(self, requests: AsyncIterator[bytes], context) -> None:
        """Triton's bidirectional stream: each ModelInferRequest read gets one ModelStreamInferResponse, its
        `infer_response` or, when that request fails, its `error_message` (the status message a unary call
        would get) beside its id, and the stream goes on. Requests run concurrently, through the batcher
        like unary ones, as one caller per stream; the answers go out in request order, as Triton sends
        them for a model that is not decoupled (a client can match an error to its request by position).
        At most STREAM_IN_FLIGHT requests are read and not yet answered: beyond that the server reads no
        further, and HTTP/2 flow control holds the client's next messages."""
        caller, deadline = f"{context.peer()} stream {next(self._stream_numbers)}", deadline_of(context)
        slots, answers, in_flight = asyncio.Semaphore(STREAM_IN_FLIGHT), asyncio.Queue(), set()

        async def read() -> None:
            while True:
                await slots.acquire()
                raw = await anext(requests, None)
                if raw is None:
                    break
                answer = asyncio.create_task(self._stream_answer(raw, deadline, caller, context))
                in_flight.add(answer)
                answer.add_done_callback(in_flight.discard)
                answers.put_nowait(answer)
            answers.put_nowait(None)

        async def write() -> None:
            while (answer := await answers.get()) is not None:
                await context.write(await answer)
                slots.release()

        reader, writer = asyncio.create_task(read()), asyncio.create_task(write())
        try:
            done, _ = await asyncio.wait((reader, writer), return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            # Also when the call is cancelled (the client left, the deadline passed, the server stopped): the
            # requests in flight go with it, and those still queued in a batcher are dropped there before
            # compute, as a cancelled unary call's are.
            for task in (reader, writer, *in_flight):
                task.cancel()

    async def _stream_answer(self, raw: bytes, deadline: float | None, caller: str,
                             context) -> kpb.ModelStreamInferResponse:
        answer, request = kpb.ModelStreamInferResponse(), None
        try:
            request = parse_message(raw, kpb.ModelInferRequest)
            with tracing.request_span(MODEL_STREAM_INFER, request.model_name, context) as trace:
                await self._infer(request, deadline, caller, answer.infer_response, trace)
            return answer
        except ServiceError as error:
            log.warning("ModelStreamInfer refused (%s): %s", error.status, error.message)
            message = error.message
        except Exception:  # one request's boundary, as grpc_errors is a call's: log the trace, answer, go on
            log.exception("ModelStreamInfer failed")
            message = INTERNAL_ERROR
        return kpb.ModelStreamInferResponse(error_message=message,
                                            infer_response=kpb.ModelInferResponse(id=request.id if request else ""))

    async def _infer(self, request: kpb.ModelInferRequest, deadline: float | None, caller: str,
                     response: kpb.ModelInferResponse, trace: tracing.Trace | tracing.NoTrace) -> None:
        """Fill `response` in place: copying a built one into a stream's answer would copy every output's bytes.
        `trace`: the request's span (server/tracing.py), through which the data plane is called."""
        if len(request.inputs) != 1:
            raise InvalidArgument(f"the request has {len(request.inputs)} inputs; send one, {INPUT_NAME!r}")
        if request.raw_input_contents and len(request.raw_input_contents) != 1:
            raise InvalidArgument("raw_input_contents must hold one entry per input (one)")
        tensor = request.inputs[0]
        raw = request.raw_input_contents[0] if request.raw_input_contents else None
        image = image_input(tensor.name, tensor.datatype, list(tensor.shape), raw, tensor.contents.uint_contents)
        requested = [(o.name, o.parameters["classification"].int64_param if "classification" in o.parameters else 0)
                     for o in request.outputs] or [(LOGITS, 0)]
        features, classification = selected_outputs(requested)
        result = await trace.infer(self.dataplane, InferRequest(
            model=request.model_name, version=parse_version(request.model_version), batch=image, features=features,
            outputs_named=True, top_k=classification, top_k_field="classification", deadline=deadline, caller=caller))
        response.model_name, response.model_version, response.id = result.model, str(result.version), request.id
        for name, _ in requested:
            if name == LOGITS and classification:
                strings = classification_strings(result, classification)
                response.outputs.add(name=name, datatype="BYTES", shape=strings.shape)
                response.raw_output_contents.append(serialize_bytes(strings))
            else:
                values = result.outputs[name]
                response.outputs.add(name=name, datatype="FP32", shape=values.shape)
                response.raw_output_contents.append(values.astype("<f4", copy=False).tobytes())

