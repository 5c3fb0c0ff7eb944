"""The data-plane proxy: InvokeEndpoint and the Open Inference Protocol in front of model servers.

It learns the routing table from the control plane's ``WatchRoutes`` stream, picks a variant and an
instance per request with `_fastroute`, calls the instance's model server and reports per-variant
counters back. Nothing durable lives here. The map:

- `dataplane`: `DataPlane`, the one domain core: an invocation in, a variant's answer out.
- `server`: assembles and runs it all; `cli`, `settings`, `security`: flags, ``MVE_*`` settings, TLS
  and credentials; `workers`: ``--workers N`` processes on one port.
- `routing/`: the routing table and the picks made from it (`router`), the ``WatchRoutes``
  subscriber (`watcher`), outlier ejection (`outliers`).
- `batching/`: dynamic batching per variant (`batcher`, `policy`, `assembly`, `queue`).
- `transport/`: the doors (gRPC servicers and their registration, SageMaker Runtime's HTTP face)
  and the wires (channels to model servers in `upstream`, message rewriting in `wire`).
- beside them: `stats` (counters and their reporter), `prometheus`, `spans`, data capture
  (`capture`, `capture_writer`), `shadow` and `traffic_copies`, `payloads` (bodies to model inputs),
  `inference_ids`, `ratelimit`.
"""
