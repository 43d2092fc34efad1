"""gRPC server reflection, as `grpc.reflection.v1` and `grpc.reflection.v1alpha`, with cnnserve's own
proto under its real name (`cnnserve/v1/classifier.proto`) and with its comments.

grpcio-reflection serves only v1alpha and builds each file from the descriptor pool, where the
generated code registered the proto under the path it was generated to and without comments.
The two versions have the same messages (only the package differs), so one servicer answers
both; for the cnnserve.v1 package it answers with the documented FileDescriptorProto that
`protos/generate.py` writes beside the generated code.
"""
from __future__ import annotations

from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as rpb

import cnnserve.proto

DOCUMENTED_PROTOS = Path(cnnserve.proto.__file__).parent / "classifier.binpb"
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
SERVICE_NAMES = (V1_SERVICE_NAME, reflection.SERVICE_NAME)


class ReflectionServicer(reflection.aio.ReflectionServicer):
    def __init__(self, service_names):
        super().__init__(service_names)
        files = descriptor_pb2.FileDescriptorSet.FromString(DOCUMENTED_PROTOS.read_bytes()).file
        self._documented = {f.name: f for f in files}
        self._packages = {f.package: f.name for f in files}

    def _documented_response(self, name: str, request) -> rpb.ServerReflectionResponse:
        file = self._documented[name]
        dependencies = [self._pool.FindFileByName(d) for d in file.dependency]   # well-known types, if any
        serialized = [file.SerializeToString()]
        for dependency in dependencies:
            proto = descriptor_pb2.FileDescriptorProto()
            dependency.CopyToProto(proto)
            serialized.append(proto.SerializeToString())
        return rpb.ServerReflectionResponse(
            file_descriptor_response=rpb.FileDescriptorResponse(file_descriptor_proto=serialized),
            original_request=request)

    def _file_by_filename(self, request, filename):
        if filename in self._documented:
            return self._documented_response(filename, request)
        return super()._file_by_filename(request, filename)

    def _file_containing_symbol(self, request, fully_qualified_name):
        try:
            package = self._pool.FindFileContainingSymbol(fully_qualified_name).package
        except KeyError:
            package = None
        if package in self._packages:
            return self._documented_response(self._packages[package], request)
        return super()._file_containing_symbol(request, fully_qualified_name)

def enable(server: grpc.aio.Server, service_names: tuple[str, ...]) -> None:
    """Serve reflection for `service_names` (the reflection services are added to the list)."""
    servicer = ReflectionServicer((*service_names, *SERVICE_NAMES))
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo, request_deserializer=rpb.ServerReflectionRequest.FromString,
        response_serializer=rpb.ServerReflectionResponse.SerializeToString)
    for name in SERVICE_NAMES:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler}),))
