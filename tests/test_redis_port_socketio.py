"""
A framework's Redis adapter end to end (SPEC section 12): python-socketio's
C{AsyncRedisManager}, on redis-py's asyncio client, shares a Socket.IO
server's emits between processes through a real C{twistd -n backplane}
Redis-protocol port instead of a Redis server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import freePort
from tests.twistd import Twistd

socketio = pytest.importorskip("socketio", reason="pip install '.[test]'")


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    folder: Path = tmp_path_factory.mktemp("socketio")
    port = freePort()
    twistd = Twistd(folder, config=f"""
[[listen]]
endpoint = "tcp:{port}:interface=127.0.0.1"
protocol = "redis"
backplanes = ["socketio"]
""").start()
    try:
        twistd.waitForPort(port)
        yield port
    finally:
        twistd.stop()


async def emitThroughBackplane(port: int) -> list[dict[str, Any]]:
    url = f"redis://127.0.0.1:{port}/0"
    # The receiving process: a Socket.IO server whose manager listens.
    listener = socketio.AsyncRedisManager(url)
    server = socketio.AsyncServer(client_manager=listener, async_mode="asgi")
    received: list[dict[str, Any]] = []
    handle = listener._handle_emit

    async def record(message: dict[str, Any]) -> None:
        received.append(message)
        await handle(message)

    listener._handle_emit = record
    listener.initialize()
    # Another process emits to a room, as Socket.IO's docs show.
    emitter = socketio.AsyncRedisManager(url, write_only=True)
    try:
        for _ in range(200):
            # Until the listener has subscribed: emits before are lost, as with Redis.
            await emitter.emit("news", {"headline": "line one\nline two"}, room="room1",
                               namespace="/")
            await asyncio.sleep(0.05)
            if received:
                break
    finally:
        listener.thread.cancel()
        del server
    return received


def test_asyncRedisManager(port: int) -> None:
    """
    An emit on one Socket.IO server's manager reaches another's, through
    backplane, whole (its JSON keeps the newline of its data escaped).
    """
    received = asyncio.run(emitThroughBackplane(port))
    assert received, "the emit never arrived"
    message = received[0]
    assert message["method"] == "emit"
    assert message["event"] == "news"
    assert message["room"] == "room1"
    assert message["data"] == [{"headline": "line one\nline two"}]
