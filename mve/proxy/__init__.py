"""The data-plane proxy: InvokeEndpoint and the Open Inference Protocol in front of model servers.

It learns the routing table from the control plane's ``WatchRoutes`` stream (`routes`), picks a
variant and an instance per request with `_fastroute` (`router`), calls the instance's model server
(`upstream`) and reports per-variant counters back (`stats`). Nothing durable lives here.
"""
