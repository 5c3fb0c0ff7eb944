"""Where a request goes: the routing table, kept in step with the control plane, and the picks made from it.

- `router`: `Router` holds one immutable `RoutingState` (`EndpointState`, `VariantState`, `TensorSpec`)
  built off to the side from a whole ``RoutingTable`` and swapped in one reference; variant and
  instance picks through `_fastroute`.
- `watcher`: `RouteWatcher`, the ``WatchRoutes`` subscriber that applies each table the control
  plane sends and resubscribes with backoff when the stream breaks.
- `outliers`: Envoy-style outlier detection: instances that keep failing or answer far slower than
  their siblings leave the rotation for a back-off and are probed before they come back.
"""
