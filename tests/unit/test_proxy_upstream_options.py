"""The proxy's channels to model servers run without gRPC's retries (the proxy retries on another instance)."""

from __future__ import annotations

import types

from mve.proxy.transport import upstream


def test_upstream_channels_are_made_with_grpc_retries_off(monkeypatch):
    made = []

    def insecure_channel(address, options=None):
        made.append((address, dict(options)))
        return types.SimpleNamespace(unary_unary=lambda *a, **k: None)

    monkeypatch.setattr(upstream.grpc.aio, "insecure_channel", insecure_channel)
    upstream.UpstreamPool().raw_model_infer("127.0.0.1:1")
    ((address, options),) = made
    assert options["grpc.enable_retries"] == 0
    assert options["grpc.max_send_message_length"] == 64 * 1024 * 1024
    # The control plane's channel keeps gRPC's defaults.
    assert "grpc.enable_retries" not in dict(upstream.CHANNEL_OPTIONS)
