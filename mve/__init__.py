"""mve: self-hosted multi-variant model endpoints over gRPC.

``mve.client("sagemaker", address=...)``, ``mve.client("cloudwatch", address=...)`` and
``mve.client("sagemaker-runtime", address=...)`` give boto3-shaped clients for the control plane
(endpoints; metrics and alarms) and the proxy.
"""

__version__ = "0.1.0"


def client(service_name: str, address: str | None = None, **kwargs):
    """A boto3-shaped client: "sagemaker" or "cloudwatch" (control plane), "sagemaker-runtime" (proxy)."""
    from mve.sdk import client as _client

    return _client(service_name, address=address, **kwargs)
