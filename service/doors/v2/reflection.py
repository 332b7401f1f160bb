"""gRPC server reflection on the gRPC port, in both versions clients ask: ``grpc.reflection.v1``
(grpcurl and Postman try it first) and ``grpc.reflection.v1alpha`` (older clients), so that
``grpcurl list`` and ``describe`` work without the .proto files.

grpcio-reflection serves only v1alpha; v1's messages are the same fields under another package,
so the same servicer answers both, and v1's descriptor is v1alpha's, renamed, added to the pool
that reflection answers from.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1 = "grpc.reflection.v1"
V1_SERVICE = f"{V1}.ServerReflection"
_V1ALPHA = reflection_pb2.DESCRIPTOR.package  # grpc.reflection.v1alpha


def enable_reflection(server: grpc.aio.Server, services: Iterable[str]) -> None:
    """Reflection of ``services`` and of both reflection services themselves."""
    _add_v1_descriptor(descriptor_pool.Default())
    names = [*services, V1_SERVICE, reflection.SERVICE_NAME]
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE, {"ServerReflectionInfo": v1}),)
    )


def _add_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """``grpc/reflection/v1/reflection.proto`` in ``pool``: v1alpha's file under v1's names."""
    file = descriptor_pb2.FileDescriptorProto.FromString(reflection_pb2.DESCRIPTOR.serialized_pb)
    file.name = "grpc/reflection/v1/reflection.proto"
    try:
        pool.FindFileByName(file.name)
        return  # a second server in this process
    except KeyError:
        pass
    file.package = V1
    for message in file.message_type:
        for field in message.field:
            if field.type_name:  # a message or enum field, not a scalar
                field.type_name = _renamed(field.type_name)
    for method in file.service[0].method:
        method.input_type, method.output_type = _renamed(method.input_type), _renamed(method.output_type)
    pool.Add(file)


def _renamed(type_name: str) -> str:
    return type_name.replace(f".{_V1ALPHA}.", f".{V1}.", 1)
