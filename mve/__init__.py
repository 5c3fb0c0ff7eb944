"""mve: self-hosted multi-variant model endpoints over gRPC.

``mve.client("sagemaker", address=...)`` and ``mve.client("sagemaker-runtime", address=...)``
give boto3-shaped clients for the control plane and the proxy.
"""

__version__ = "0.1.0"


def client(service_name: str, address: str | None = None, **kwargs):
    """A boto3-shaped client: "sagemaker" (control plane) or "sagemaker-runtime" (proxy)."""
    from mve.sdk import client as _client

    return _client(service_name, address=address, **kwargs)
