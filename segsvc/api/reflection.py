"""Server reflection under both names clients ask for: `grpc.reflection.v1` (current grpcurl,
grpc-js and Postman) and `grpc.reflection.v1alpha` (older clients).

grpcio-reflection implements only v1alpha. The v1 protocol is the same messages with the same
field numbers in another package, so the same bytes mean the same thing under either name: one
servicer answers both, and v1 calls are decoded and encoded with v1alpha's classes. The v1
service's own descriptor (v1alpha's, renamed) is added to the pool, so a client that describes
the reflection service itself finds it too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA_SERVICE: str = reflection.SERVICE_NAME
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE = f"{V1_PACKAGE}.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"


def enable_reflection(server: grpc.Server, service_names: Iterable[str]) -> None:
    """Serves reflection v1 and v1alpha on `server`, listing `service_names` and both
    reflection services."""
    _add_v1_descriptor(descriptor_pool.Default())
    servicer = reflection.ReflectionServicer((*service_names, V1ALPHA_SERVICE, V1_SERVICE))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)

    def v1_info(
        requests: Iterator[message.Message], context: grpc.ServicerContext
    ) -> Iterator[reflection_pb2.ServerReflectionResponse]:
        # Whoever parsed the request (grpc with the deserializer below, or our decoding
        # interceptor with v1's own descriptor) the servicer wants v1alpha's class.
        as_v1alpha = (
            request
            if isinstance(request, reflection_pb2.ServerReflectionRequest)
            else reflection_pb2.ServerReflectionRequest.FromString(request.SerializeToString())
            for request in requests
        )
        # A generator, though grpcio-reflection's annotations say it returns nothing.
        yield from servicer.ServerReflectionInfo(as_v1alpha, context)  # type: ignore[func-returns-value,misc]

    v1 = grpc.method_handlers_generic_handler(
        V1_SERVICE,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                v1_info,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1,))


def _add_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(V1_FILE)
        return  # a second server in the same process
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old_package = proto.package
    proto.name = V1_FILE
    proto.package = V1_PACKAGE

    def renamed(type_name: str) -> str:
        return type_name.replace(f".{old_package}.", f".{V1_PACKAGE}.", 1)

    def rename_fields(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
        for described in messages:
            for field in described.field:
                if field.HasField("type_name"):  # scalars have none, and must not get one
                    field.type_name = renamed(field.type_name)
            rename_fields(described.nested_type)

    rename_fields(proto.message_type)
    for service in proto.service:
        for method in service.method:
            method.input_type = renamed(method.input_type)
            method.output_type = renamed(method.output_type)
    pool.AddSerializedFile(proto.SerializeToString())
