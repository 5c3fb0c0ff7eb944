"""The proxy's Router keeps the applied table's SigV4 date keys and auth_required for the HTTP door."""

from __future__ import annotations

from mve._proto import control_pb2 as pb
from mve.proxy.routing.router import Router
from mve.sigv4 import date_key


def table(version: int, auth_required: bool, keys: dict[tuple[str, str], bytes]) -> pb.RoutingTable:
    return pb.RoutingTable(
        version=version, control_plane_id="cp", auth_required=auth_required,
        signing_keys=[pb.SigningKey(access_key_id=k, date=d, date_key=v) for (k, d), v in keys.items()],
    )


def test_before_any_table_nothing_passes():
    router = Router(seed=1)
    assert not router.has_table
    assert router.signing_keys.auth_required
    assert router.signing_keys.date_key("MVEKAAAAAAAAAAAAAAAA", "20240101") is None


def test_applied_table_carries_keys_and_auth_required():
    router = Router(seed=1)
    key = date_key("s" * 40, "20240101")
    assert router.apply(table(1, True, {("MVEKAAAAAAAAAAAAAAAA", "20240101"): key}))
    assert router.signing_keys.auth_required
    assert router.signing_keys.date_key("MVEKAAAAAAAAAAAAAAAA", "20240101") == key
    assert router.apply(table(2, False, {}))
    assert not router.signing_keys.auth_required
    assert router.signing_keys.date_key("MVEKAAAAAAAAAAAAAAAA", "20240101") is None


def test_an_older_table_does_not_bring_back_old_keys():
    router = Router(seed=1)
    key = date_key("s" * 40, "20240101")
    router.apply(table(5, True, {}))
    assert not router.apply(table(4, True, {("MVEKAAAAAAAAAAAAAAAA", "20240101"): key}))
    assert router.signing_keys.date_key("MVEKAAAAAAAAAAAAAAAA", "20240101") is None
