"""``mve.client(service_name, address=...)``: make a boto3-shaped client for the control plane or a proxy.

    sm = mve.client("sagemaker", address="127.0.0.1:7070")          # control plane
    cw = mve.client("cloudwatch", address="127.0.0.1:7070")         # control plane: metrics, alarms
    aas = mve.client("application-autoscaling", address="127.0.0.1:7070")  # control plane: autoscaling
    exp = mve.client("experiments", address="127.0.0.1:7070")       # control plane: feedback, reports, bandits
    iam = mve.client("iam", address="127.0.0.1:7070")               # control plane: access keys for SigV4
    smr = mve.client("sagemaker-runtime", address="127.0.0.1:8080")  # a proxy

The address defaults to $MVE_CONTROL_PLANE (sagemaker, cloudwatch, application-autoscaling,
experiments, iam) or $MVE_ENDPOINT (sagemaker-runtime), then 127.0.0.1:7070 / 127.0.0.1:8080. Calls
have deadlines: 30 s (control plane) and 60 s (runtime) unless ``timeout=`` says otherwise. The implementation lives in `mve.sdk`.

``endpoint_url=`` (boto3's keyword) is the same gRPC address written as a URL: ``grpc://HOST:PORT``
(or plain ``HOST:PORT``). An ``http(s)://`` URL is refused with a ValueError that says what to do:
mve's HTTP faces (SageMaker's own HTTP APIs, SigV4-signed) are for boto3 itself,
``boto3.client(service, endpoint_url="http://HOST:7071")`` (control plane) or ``:8081`` (runtime);
mve.client speaks gRPC and does not guess a gRPC port from an HTTP one.

TLS and credentials (a mesh started with ``mve up --secure``, or services given ``--tls-*`` and
``--token-file`` flags) come from one place, the first that names any of them:

1. the keywords ``token=`` (a bearer token), ``tls_ca=`` (the CA bundle that signed the server's
   certificate), ``tls_cert=`` and ``tls_key=`` (a client certificate for mutual TLS);
2. the environment: ``MVE_TLS_CA``, ``MVE_TLS_CERT``, ``MVE_TLS_KEY``, ``MVE_TOKEN`` or ``MVE_TOKEN_FILE``;
3. the data dir ``$MVE_DATA_DIR`` (else ``./.mve``) when it has ``tls/ca.crt``: its CA, its admin
   client certificate and its token, as ``mve up --secure`` made them.

    sm = mve.client("sagemaker", address="10.0.0.5:7070", tls_ca="ca.crt", token=open("token").read().strip())

The channel is TLS when a CA is known; the token goes with every call (``authorization: Bearer``
metadata). A file that is missing, malformed, or a key that others can read is a ValueError naming the
keyword or variable, raised here, not at the first call. See `mve.sdk.security` and docs/security.md.
"""

from __future__ import annotations

import os

from mve.sdk.autoscaling import ApplicationAutoScalingClient
from mve.sdk.cloudwatch import CloudWatchClient
from mve.sdk.control import SageMakerClient
from mve.sdk.experiments import ExperimentsClient
from mve.sdk.iam import IAMClient
from mve.sdk.runtime import SageMakerRuntimeClient
from mve.sdk.security import ClientSecurity, resolve_client_security

DEFAULT_CONTROL_PLANE = "127.0.0.1:7070"
DEFAULT_ENDPOINT = "127.0.0.1:8080"

SERVICES = {
    "sagemaker": (SageMakerClient, "MVE_CONTROL_PLANE", DEFAULT_CONTROL_PLANE),
    "sagemaker-runtime": (SageMakerRuntimeClient, "MVE_ENDPOINT", DEFAULT_ENDPOINT),
    "cloudwatch": (CloudWatchClient, "MVE_CONTROL_PLANE", DEFAULT_CONTROL_PLANE),
    "application-autoscaling": (ApplicationAutoScalingClient, "MVE_CONTROL_PLANE", DEFAULT_CONTROL_PLANE),
    "experiments": (ExperimentsClient, "MVE_CONTROL_PLANE", DEFAULT_CONTROL_PLANE),
    "iam": (IAMClient, "MVE_CONTROL_PLANE", DEFAULT_CONTROL_PLANE),
}


def default_address(service_name: str) -> str:
    """The address a client of `service_name` uses when none is given (env, then the default port)."""
    _, env_name, fallback = SERVICES[service_name]
    return os.environ.get(env_name) or fallback


GRPC_SCHEME = "grpc"


def address_of_endpoint_url(endpoint_url: str, service_name: str = "sagemaker") -> str:
    """The gRPC address ``HOST:PORT`` an `endpoint_url` names (``grpc://HOST:PORT`` or ``HOST:PORT``).

    An http(s) URL is a ValueError pointing at boto3: that is where mve's HTTP faces are used.
    """
    scheme, sep, rest = endpoint_url.partition("://")
    if not sep:
        return endpoint_url
    if scheme.lower() in ("http", "https"):
        raise ValueError(
            f"mve.client speaks gRPC, and {endpoint_url!r} is an HTTP URL. mve's HTTP faces speak "
            f"SageMaker's own HTTP APIs for boto3: use boto3.client({service_name!r}, "
            f"endpoint_url={endpoint_url!r}, ...) with a key from `mve keys create` (docs/boto3.md). "
            f"For mve.client give the gRPC address: endpoint_url='grpc://HOST:PORT' "
            f"(control plane 7070, proxy 8080)."
        )
    if scheme.lower() != GRPC_SCHEME:
        raise ValueError(f"endpoint_url {endpoint_url!r}: mve.client takes grpc://HOST:PORT or HOST:PORT")
    if "/" in rest.rstrip("/"):
        raise ValueError(f"endpoint_url {endpoint_url!r}: a gRPC address has no path; give grpc://HOST:PORT")
    return rest.rstrip("/")


def client(
    service_name: str,
    address: str | None = None,
    *,
    endpoint_url: str | None = None,
    timeout: float | None = None,
    token: str | None = None,
    tls_ca: str | os.PathLike | None = None,
    tls_cert: str | os.PathLike | None = None,
    tls_key: str | os.PathLike | None = None,
    **kwargs,
):
    """A boto3-shaped client: "sagemaker", "cloudwatch", "application-autoscaling", "experiments" or
    "iam" (control plane), "sagemaker-runtime" (proxy).

    `address` or `endpoint_url` (``grpc://HOST:PORT``; see `address_of_endpoint_url`) names the
    gRPC server; not both. Unknown service names raise ValueError. boto3's ``region_name`` and
    credential keywords are accepted and ignored (the gRPC doors are not signed), so that code
    written for boto3 runs unchanged.

    `token`, `tls_ca`, `tls_cert` and `tls_key` are mve's own credentials for its gRPC doors: when
    none is given, the environment's (MVE_TLS_CA, MVE_TLS_CERT, MVE_TLS_KEY, MVE_TOKEN,
    MVE_TOKEN_FILE) are used, else a secure data dir's ($MVE_DATA_DIR or ./.mve with tls/ca.crt);
    see the module docstring. A bad file or token is a ValueError naming the keyword or variable.
    """
    if service_name not in SERVICES:
        raise ValueError(f"Unknown service: {service_name!r}. Valid service names are: {', '.join(SERVICES)}")
    if endpoint_url is not None:
        if address is not None:
            raise TypeError("client() takes address or endpoint_url, not both")
        address = address_of_endpoint_url(endpoint_url, service_name)
    ignored = {"region_name", "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "config"}
    unknown = set(kwargs) - ignored
    if unknown:
        raise TypeError(f"client() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    security = resolve_client_security(token=token, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key)
    return client_with_security(service_name, address, security, timeout=timeout)


def client_with_security(service_name: str, address: str | None, security: ClientSecurity, *,
                         timeout: float | None = None):
    """A client of `service_name` that dials with `security` as given (`mve.sdk.security`), not
    resolved from keywords, environment or data dir: for mve's own processes and its mesh."""
    if service_name not in SERVICES:
        raise ValueError(f"Unknown service: {service_name!r}. Valid service names are: {', '.join(SERVICES)}")
    cls, _, _ = SERVICES[service_name]
    options = {} if timeout is None else {"timeout": timeout}
    return cls(address or default_address(service_name), security=security, **options)


__all__ = ["SERVICES", "address_of_endpoint_url", "client", "client_with_security", "default_address"]
