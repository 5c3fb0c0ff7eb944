"""The model server: one ONNX Runtime session served over the Open Inference Protocol (gRPC).

``mve model-server --model PATH`` loads the model, then serves ``inference.GRPCInferenceService``,
``grpc.health.v1`` and server reflection. Modules: `settings` (flags, validated once),
`runtime` (the ONNX Runtime session and its tensor metadata), `devices` (why CUDA is not usable),
`infer` (request tensors -> numpy and back), `servicer` (the thin gRPC servicer) and `server`
(start, ready line, graceful stop).
"""
