"""KServe v2 / Open Inference Protocol over gRPC (`inference.GRPCInferenceService`), on the data plane.

The messages and service stubs are the ones `tritonclient` ships (`tritonclient.grpc.service_pb2`),
so Triton's clients, perf_analyzer and anything else that speaks the protocol can call cnnserve.
What the protocol means whatever carries it (versions, the `image` input, outputs, the
classification extension, statistics) is in `server/kserve_protocol.py`, shared with HTTP.
"""
from __future__ import annotations

from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc

from cnnserve.spec import INPUT_NAME, LOGITS
from server.dataplane import DataPlane, InferRequest
from server.errors import InvalidArgument
from server.grpc_common import deadline_of, grpc_errors
from server.kserve_protocol import (
    EXTENSIONS,
    PLATFORM,
    classification_strings,
    image_input,
    parse_version,
    repository_index,
    selected_outputs,
    serialize_bytes,
    server_version,
    statistics,
    tensor_metadata,
)

SERVICE_DESCRIPTOR = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"]


class KServeGrpcService(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane):
        self.dataplane = dataplane

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
            name=model.name, versions=[str(model.version.version)], platform=PLATFORM,
            inputs=[tensor(name=n, datatype=d, shape=s) for n, d, s in inputs],
            outputs=[tensor(name=n, datatype=d, shape=s) for n, d, s in outputs])

    @grpc_errors
    async def ModelConfig(self, request, context):
        model = self.dataplane.model(request.name, parse_version(request.version))
        return kpb.ModelConfigResponse(config=model.version.config)

    @grpc_errors
    async def RepositoryIndex(self, request, context):
        return json_format.ParseDict({"models": repository_index(self.dataplane, request.ready)},
                                     kpb.RepositoryIndexResponse())

    @grpc_errors
    async def ModelStatistics(self, request, context):
        return json_format.ParseDict(statistics(self.dataplane, request.name, request.version),
                                     kpb.ModelStatisticsResponse())

    @grpc_errors
    async def ModelInfer(self, request: kpb.ModelInferRequest, context) -> kpb.ModelInferResponse:
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
        result = await self.dataplane.infer(InferRequest(
            model=request.model_name, version=parse_version(request.model_version), batch=image, features=features,
            outputs_named=True, top_k=classification, top_k_field="classification", deadline=deadline_of(context),
            caller=context.peer()))
        response = kpb.ModelInferResponse(model_name=result.model, model_version=str(result.version), id=request.id)
        for name, _ in requested:
            if name == LOGITS and classification:
                strings = classification_strings(result, classification)
                response.outputs.add(name=name, datatype="BYTES", shape=strings.shape)
                response.raw_output_contents.append(serialize_bytes(strings))
            else:
                values = result.outputs[name]
                response.outputs.add(name=name, datatype="FP32", shape=values.shape)
                response.raw_output_contents.append(values.astype("<f4", copy=False).tobytes())
        return response
