"""mve.v1.AccessKeys in an in-process server, and the routing tables that carry the keys' date keys."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from mve._proto import keys_pb2 as pb
from mve._proto import keys_pb2_grpc
from mve.control.access_keys import AccessKeyStore, keep_window_current, window_days
from mve.control.keys_servicer import AccessKeysServicer
from mve.control.routes import RoutePublisher
from mve.control.store import SqliteStore
from mve.errors import ErrorInterceptor, reason_of
from mve.sigv4 import AuthError, SigningKeys, verify


class Plane:
    """A store, an access key store, a publisher and the AccessKeys servicer on a free loopback port."""

    def __init__(self, tmp_path, auth_required: bool = True, clock=time.time):
        self.store = SqliteStore(tmp_path / "mve.db")
        self.keys = AccessKeyStore(tmp_path / "mve.db", tmp_path / "master.key", clock=clock)
        self.routes = RoutePublisher(self.store, self.keys.signing_keys if auth_required else None)

    async def __aenter__(self):
        self.server = grpc.aio.server(interceptors=[ErrorInterceptor()])
        keys_pb2_grpc.add_AccessKeysServicer_to_server(AccessKeysServicer(self.keys, self.routes.publish), self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = keys_pb2_grpc.AccessKeysStub(self.channel)
        return self

    async def __aexit__(self, *exc):
        await self.channel.close()
        await self.server.stop(grace=None)
        self.keys.close()
        self.store.close()


def signed(key_id: str, secret: str, body: bytes = b"{}"):
    request = AWSRequest(method="POST", url="http://127.0.0.1:7071/", data=body,
                         headers={"X-Amz-Target": "SageMaker.ListEndpoints"})
    SigV4Auth(Credentials(key_id, secret), "sagemaker", "us-west-2").add_auth(request)
    return "POST", request.url, {**dict(request.headers.items()), "Host": "127.0.0.1:7071"}, body


def test_create_list_delete(tmp_path):
    async def scenario():
        async with Plane(tmp_path) as plane:
            created = await plane.stub.CreateAccessKey(pb.CreateAccessKeyRequest(description="ci runner"))
            key_id = created.access_key.access_key_id
            assert key_id.startswith("MVEK") and len(created.secret_access_key) == 40
            assert created.access_key.description == "ci runner"
            assert abs(created.access_key.create_date.ToSeconds() - time.time()) < 60
            listed = await plane.stub.ListAccessKeys(pb.ListAccessKeysRequest())
            assert [k.access_key_id for k in listed.access_keys] == [key_id]
            assert "secret" not in str(listed).lower()
            await plane.stub.DeleteAccessKey(pb.DeleteAccessKeyRequest(access_key_id=key_id))
            assert not (await plane.stub.ListAccessKeys(pb.ListAccessKeysRequest())).access_keys

    asyncio.run(scenario())


def test_errors_are_named_as_iam_names_them(tmp_path):
    async def scenario():
        async with Plane(tmp_path) as plane:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await plane.stub.DeleteAccessKey(pb.DeleteAccessKeyRequest(access_key_id="MVEKNOSUCHKEYNOSUCH1"))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert reason_of(info.value) == "NoSuchEntity"
            assert "MVEKNOSUCHKEYNOSUCH1" in info.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await plane.stub.CreateAccessKey(pb.CreateAccessKeyRequest(description="x" * 257))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason_of(info.value) == "InvalidInput"

    asyncio.run(scenario())


def test_tables_carry_three_date_keys_per_key_that_verify_signatures(tmp_path):
    async def scenario():
        async with Plane(tmp_path) as plane:
            empty = plane.routes.current
            assert empty.auth_required and not empty.signing_keys
            created = await plane.stub.CreateAccessKey(pb.CreateAccessKeyRequest())
            table = plane.routes.current
            assert table.version > empty.version
            key_id = created.access_key.access_key_id
            assert sorted(k.date for k in table.signing_keys) == sorted(window_days(time.time()))
            assert {k.access_key_id for k in table.signing_keys} == {key_id}
            keys = SigningKeys.from_table(table)
            assert verify(*signed(key_id, created.secret_access_key), keys) == key_id
            assert plane.routes.signing_keys.date_key(key_id, time.strftime("%Y%m%d", time.gmtime())) is not None

            await plane.stub.DeleteAccessKey(pb.DeleteAccessKeyRequest(access_key_id=key_id))
            after = plane.routes.current
            assert after.version > table.version and not after.signing_keys
            with pytest.raises(AuthError) as info:
                verify(*signed(key_id, created.secret_access_key), SigningKeys.from_table(after))
            assert info.value.code == "UnrecognizedClientException"

    asyncio.run(scenario())


def test_a_subscriber_receives_the_table_with_the_new_key(tmp_path):
    async def scenario():
        async with Plane(tmp_path) as plane:
            stream = plane.routes.subscribe()
            first = await stream.__anext__()
            created = await plane.stub.CreateAccessKey(pb.CreateAccessKeyRequest())
            second = await asyncio.wait_for(stream.__anext__(), 5)
            assert second.version > first.version
            assert {k.access_key_id for k in second.signing_keys} == {created.access_key.access_key_id}
            await stream.aclose()

    asyncio.run(scenario())


def test_auth_none_tables_carry_no_keys(tmp_path):
    async def scenario():
        async with Plane(tmp_path, auth_required=False) as plane:
            await plane.stub.CreateAccessKey(pb.CreateAccessKeyRequest())
            table = plane.routes.current
            assert not table.auth_required and not table.signing_keys
            assert not plane.routes.signing_keys.auth_required

    asyncio.run(scenario())


def test_the_table_follows_the_utc_day(tmp_path):
    clock = [1709251170.0]  # 2024-02-29 23:59:30 UTC
    sleeps = []

    async def scenario():
        plane = Plane(tmp_path, clock=lambda: clock[0])
        plane.keys.create("")
        before = plane.routes.current
        assert sorted({k.date for k in before.signing_keys}) == ["20240228", "20240229", "20240301"]

        async def sleep(seconds):
            sleeps.append(seconds)
            clock[0] += seconds
            if len(sleeps) >= 2:
                raise asyncio.CancelledError

        with pytest.raises(asyncio.CancelledError):
            await keep_window_current(plane.keys, plane.routes.publish, clock=lambda: clock[0], sleep=sleep)
        after = plane.routes.current
        assert after.version > before.version
        assert sorted({k.date for k in after.signing_keys}) == ["20240229", "20240301", "20240302"]
        plane.keys.close()
        plane.store.close()

    asyncio.run(scenario())
    assert sleeps == [30.5, 60.0]  # just past midnight, then at least every minute
