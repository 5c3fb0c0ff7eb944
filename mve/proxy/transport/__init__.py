"""The proxy's doors and wires: how requests come in, and how calls go out to model servers.

Doors (protocol in, one `mve.proxy.dataplane.DataPlane` call, protocol out):

- `grpc_servicers`: the gRPC servicers, ``mve.v1.EndpointRuntime`` (InvokeEndpoint) and
  ``inference.GRPCInferenceService`` (the Open Inference Protocol, ModelInfer on raw bytes).
- `grpc_registry`: `ErrorMappingServer`, which wraps each gRPC handler once at registration with
  the error mapping and invocation auth (instead of interceptors).
- `http_runtime`: SageMaker Runtime's HTTP face (rest-json InvokeEndpoint for unmodified boto3);
  `http_auth` decides who may call it (SigV4), `http_errors` writes its errors as botocore parses them.

Wires:

- `upstream`: `UpstreamPool`, the grpc.aio channels to model servers, and `infer_on_variant`, one
  ModelInfer on a variant with its retry and error mapping.
- `wire`: rewriting serialised Open Inference Protocol messages without decoding their tensors.
"""
