"""An in-process mve.v1.AccessKeys server (the real servicer and store) for SDK and CLI tests."""

from __future__ import annotations

import asyncio
import threading

import grpc

from mve._proto import keys_pb2_grpc
from mve.control.access_keys import AccessKeyStore
from mve.control.keys_servicer import AccessKeysServicer
from mve.errors import ErrorInterceptor


class KeysServer:
    """The servicer over an `AccessKeyStore` in `data_dir`, on a free loopback port, served by an
    event loop in a thread; ``changes`` counts the routing-table re-publications it asked for."""

    def __init__(self, data_dir):
        self.store = AccessKeyStore(data_dir / "mve.db", data_dir / "master.key")
        self.changes = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _changed(self):
        self.changes += 1

    def _run(self):
        asyncio.set_event_loop(self.loop)

        async def start():
            self.server = grpc.aio.server(interceptors=[ErrorInterceptor()])
            keys_pb2_grpc.add_AccessKeysServicer_to_server(AccessKeysServicer(self.store, self._changed), self.server)
            self.port = self.server.add_insecure_port("127.0.0.1:0")
            await self.server.start()

        self.loop.run_until_complete(start())
        self.ready.set()
        self.loop.run_forever()

    def __enter__(self) -> "KeysServer":
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("the keys server did not start")
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.store.close()
