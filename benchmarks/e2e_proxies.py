"""The end-to-end benchmark's mve proxies: one per transport, on the same control plane and model servers.

``mve proxy --transport native|grpc-aio`` serves the gRPC door on the C HTTP/2 loop or on
grpc.aio (docs/transport.md). The benchmark runs the proxy on each transport of ``--transports``
in the same run, so that their rows share the machine's moment and the model servers:

- the mesh's own proxy runs the first transport (``--transport`` passed explicitly, with its own
  ``--proxy-id``);
- every other transport gets a proxy of its own, started here (`mve.supervise.Child`, as the
  tracing rows start theirs) on the same control plane: so the same endpoints and the same
  model-server instances, with its own ``--port 0``, no HTTP door (``--http-port -1``), no metrics
  port (``--metrics-port -1``) and its own ``--proxy-id``; always stopped when the block ends.

Each proxy says its transport in its ready line; a proxy that came up on another transport than
the one asked for stops the run.

Scenario names in the JSON: the first transport's rows keep ``mve`` and ``mve_batched`` (what
earlier runs and tests/integration/test_bench_e2e.py read); another transport's rows are
``mve_<transport>`` and ``mve_batched_<transport>`` (``mve_grpc_aio``). Printed labels name the
transport on every row (``mve native``, ``mve grpc-aio, batched``).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass

TRANSPORTS = ("native", "grpc-aio")
PROXY_ID = "bench-e2e-{transport}"
READY_TIMEOUT_S = 60.0
GRACE_S = 10.0


@dataclass
class MveProxy:
    """One mve proxy of the run: its transport, address, process and the names of its rows."""

    transport: str
    address: str
    pid: int
    proxy_id: str
    scenario: str  # its unbatched rows (endpoint ``mlp``)
    batched_scenario: str  # its batched rows (endpoint ``mlp-batched``, and the compute-bound row)

    def summary(self) -> dict:
        """What the JSON keeps of it."""
        return {"address": self.address, "proxy_id": self.proxy_id, "scenario": self.scenario,
                "batched_scenario": self.batched_scenario}


def native_available() -> bool:
    """Whether this checkout has mve._h2transport (the proxy's native door)."""
    try:
        import mve._h2transport  # noqa: F401
    except ImportError:
        return False
    return True


def default_transports() -> tuple[list[str], str | None]:
    """Both transports where the native one is built; else grpc-aio alone, with the reason to print."""
    if native_available():
        return list(TRANSPORTS), None
    return ["grpc-aio"], ("mve._h2transport is not built (libnghttp2-dev missing at build time): the mve rows run "
                          "on grpc-aio only; see docs/transport.md, 'How it is built'")


def parse_transports(text: str) -> list[str]:
    """``native,grpc-aio`` -> ['native', 'grpc-aio'] (order kept, no repeats); ValueError names what is wrong."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in TRANSPORTS]
    if not names or unknown:
        raise ValueError(f"--transports takes a comma-separated list of {', '.join(TRANSPORTS)}"
                         f"{'; unknown: ' + ', '.join(unknown) if unknown else ''}")
    if len(set(names)) != len(names):
        raise ValueError("--transports names a transport twice")
    if "native" in names and not native_available():
        raise ValueError("--transports native: mve._h2transport is not built in this checkout "
                         "(install libnghttp2-dev and rebuild: python setup.py build_ext --inplace)")
    return names


def scenario_names(transport: str, primary: bool) -> tuple[str, str]:
    """The JSON names of a transport's unbatched and batched rows."""
    if primary:
        return "mve", "mve_batched"
    slug = transport.replace("-", "_")
    return f"mve_{slug}", f"mve_batched_{slug}"


def proxy_args(transport: str) -> list[str]:
    """The flags that put a proxy on `transport` under its own stats identity."""
    return ["--transport", transport, "--proxy-id", PROXY_ID.format(transport=transport)]


def labels(transports: list[str]) -> dict[str, str]:
    """Printed label of every mve scenario of the run, by JSON name."""
    out = {}
    for index, transport in enumerate(transports):
        plain, batched = scenario_names(transport, index == 0)
        out[plain] = f"mve {transport}"
        out[batched] = f"mve {transport}, batched"
    return out


def mesh_proxy(mesh, transport: str) -> MveProxy:
    """The mesh's own proxy (started with `proxy_args(transport)`) as an `MveProxy`."""
    plain, batched = scenario_names(transport, True)
    return MveProxy(transport, mesh.proxy_address, mesh.child_pids()["proxy"], PROXY_ID.format(transport=transport),
                    plain, batched)


@contextmanager
def more_proxies(control_plane: str, transports: list[str], extra_args, log, env: dict):
    """A proxy per transport in `transports` on `control_plane`; yields them as `MveProxy`s; always stops them."""
    from mve.supervise import Child

    children: list = []
    proxies: list[MveProxy] = []
    try:
        for transport in transports:
            child = Child(f"proxy-{transport}", lambda port, t=transport: [
                "proxy", "--control-plane", control_plane, "--host", "127.0.0.1", "--port", str(port),
                "--http-port", "-1", "--metrics-port", "-1", *proxy_args(t), *extra_args], 0, log, env)
            children.append(child)
            child.start(READY_TIMEOUT_S)
            said = child.ready_event.get("transport")
            if said != transport:
                raise RuntimeError(f"the proxy asked for --transport {transport} says transport={said!r} in its "
                                   f"ready line")
            plain, batched = scenario_names(transport, False)
            proxies.append(MveProxy(transport, child.address, child.process.pid,
                                    PROXY_ID.format(transport=transport), plain, batched))
            print(f"  proxy {transport}: {child.address} (pid {child.process.pid})", file=sys.stderr)
        yield proxies
    finally:
        for child in children:
            child.stop(GRACE_S)
