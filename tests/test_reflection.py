"""Server reflection as grpcurl and other tools use it: both `grpc.reflection.v1` and `v1alpha`, with
cnnserve's proto under its real path and with its comments."""
import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2 as rpb

V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def ask(channel: grpc.Channel, method: str, **request) -> rpb.ServerReflectionResponse:
    """One request on a reflection stream (v1 and v1alpha have the same messages)."""
    call = channel.stream_stream(method, request_serializer=rpb.ServerReflectionRequest.SerializeToString,
                                 response_deserializer=rpb.ServerReflectionResponse.FromString)
    return next(call(iter([rpb.ServerReflectionRequest(**request)]), timeout=10))


@pytest.mark.parametrize("method", [V1, V1ALPHA])
def test_reflection_lists_services_and_serves_the_documented_proto(server, method):
    services = {s.name for s in ask(server.channel, method, list_services="").list_services_response.service}
    assert {"cnnserve.v1.Classifier", "inference.GRPCInferenceService", "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= services

    for request in ({"file_containing_symbol": "cnnserve.v1.Classifier"},
                    {"file_by_filename": "cnnserve/v1/classifier.proto"}):
        files = ask(server.channel, method, **request).file_descriptor_response.file_descriptor_proto
        proto = descriptor_pb2.FileDescriptorProto.FromString(files[0])
        assert proto.name == "cnnserve/v1/classifier.proto" and proto.package == "cnnserve.v1"
        comments = " ".join(location.leading_comments for location in proto.source_code_info.location)
        assert "Classify a batch of images with one model." in comments

    files = ask(server.channel, method, file_containing_symbol="grpc.health.v1.Health")
    assert files.file_descriptor_response.file_descriptor_proto            # other services as before
    missing = ask(server.channel, method, file_containing_symbol="cnnserve.v1.NoSuchThing")
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
