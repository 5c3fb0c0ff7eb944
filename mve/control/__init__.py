"""The mve control plane: models, endpoint configs and endpoints with SageMaker's semantics.

Modules, one job each: `records` (domain types), `validation` (SageMaker's names and ranges),
`instance_types` (SageMaker's and mve's instance types to local resources), `artifacts` (the content-addressed
model store), `store` (SQLite), `service` (the API's domain logic), `servicer` (thin gRPC),
`routes` (routing tables and their subscribers), `instances` (model-server processes),
`reconciler` (drives endpoints to their desired state), `settings`, `server`, `cli`.
"""
