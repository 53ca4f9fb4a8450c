"""The KServe v2 gRPC service for Serve's gRPC proxy: tritonclient's ``GRPCInferenceService``, made picklable.

tritonclient's generated modules name themselves ``grpc_service_pb2`` and
``model_config_pb2`` (the names of the ``.proto`` files), not the modules they
live in, so their messages cannot be pickled by reference, and Serve's gRPC
proxy pickles each request on its way to the ingress replica. Importing this
module makes those names resolve, in the proxy (which imports the servicer
function below, ``AppConfig.grpc_options``) and in the ingress replicas.
"""

from __future__ import annotations

import sys

from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

sys.modules.setdefault("grpc_service_pb2", service_pb2)
sys.modules.setdefault("model_config_pb2", model_config_pb2)


def add_GRPCInferenceServiceServicer_to_server(servicer, server) -> None:
    """tritonclient's servicer registration, after the names above resolve."""
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
