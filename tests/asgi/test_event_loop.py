"""asyncio on ringserve's loop (`server.aio.new_event_loop`), on both backends: what an
ASGI app (or uvicorn's --loop server.aio:new_event_loop) relies on beyond sockets
the server owns -- timers, wake-ups from threads, readers and writers, the sock_*
coroutines, signal handlers, executors and subprocess pipes.  Each test closes its
loop and leaves no fd open."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from server.aio import RingEventLoop, new_event_loop
from tests.conftest import open_fds

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def loop(backend_name: str) -> Iterator[RingEventLoop]:
    fds = open_fds()
    lp = new_event_loop(backend_name)  # type: ignore[arg-type]
    asyncio.set_event_loop(lp)
    try:
        yield lp
    finally:
        asyncio.set_event_loop(None)
        lp.close()
    assert open_fds() == fds, "the loop left fds open"


def test_timers_run_in_deadline_order_after_call_soon(loop: RingEventLoop) -> None:
    order: list[str] = []
    loop.call_later(0.03, order.append, "30ms")
    loop.call_later(0.01, order.append, "10ms")
    loop.call_at(loop.time() + 0.02, order.append, "20ms")
    loop.call_soon(order.append, "soon")
    start = time.monotonic()
    loop.run_until_complete(asyncio.sleep(0.05))
    assert order == ["soon", "10ms", "20ms", "30ms"]
    assert 0.05 <= time.monotonic() - start < 1


def test_call_soon_threadsafe_wakes_a_loop_blocked_in_its_wait(loop: RingEventLoop) -> None:
    done = loop.create_future()

    def other() -> None:
        time.sleep(0.1)
        loop.call_soon_threadsafe(done.set_result, threading.current_thread().name)

    t = threading.Thread(target=other, name="waker")
    start = time.monotonic()
    t.start()
    # The loop has nothing else to do: it blocks in the backend until the wake-up.
    assert loop.run_until_complete(asyncio.wait_for(done, 5)) == "waker"
    assert time.monotonic() - start < 2
    t.join()


def test_add_reader_and_add_writer_on_a_socketpair(loop: RingEventLoop) -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    got: asyncio.Future[bytes] = loop.create_future()
    writable: asyncio.Future[bool] = loop.create_future()
    try:
        loop.add_reader(b.fileno(), lambda: got.done() or got.set_result(b.recv(100)))
        loop.add_writer(a.fileno(), lambda: writable.done() or writable.set_result(True))
        assert loop.run_until_complete(asyncio.wait_for(writable, 5)) is True
        assert loop.remove_writer(a.fileno())
        a.send(b"ping")
        assert loop.run_until_complete(asyncio.wait_for(got, 5)) == b"ping"
        assert loop.remove_reader(b.fileno())
        assert not loop.remove_reader(b.fileno())  # already gone
    finally:
        a.close()
        b.close()


def test_sock_accept_connect_sendall_recv(loop: RingEventLoop) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    client = socket.socket()
    client.setblocking(False)

    async def talk() -> bytes:
        accept = asyncio.ensure_future(loop.sock_accept(listener))
        await loop.sock_connect(client, listener.getsockname())
        server_side, _ = await accept
        with server_side:
            await loop.sock_sendall(client, b"x" * 300_000)
            got = bytearray()
            while len(got) < 300_000:
                got += await loop.sock_recv(server_side, 65536)
            await loop.sock_sendall(server_side, b"done")
            return bytes(got[:1]) + await loop.sock_recv(client, 10)

    try:
        assert loop.run_until_complete(asyncio.wait_for(talk(), 10)) == b"xdone"
    finally:
        client.close()
        listener.close()


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals")
def test_a_signal_handler_runs_on_the_loop(loop: RingEventLoop) -> None:
    got: asyncio.Future[int] = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR2, lambda: got.set_result(signal.SIGUSR2))
    try:
        loop.call_later(0.05, os.kill, os.getpid(), signal.SIGUSR2)
        assert loop.run_until_complete(asyncio.wait_for(got, 5)) == signal.SIGUSR2
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR2)


def test_run_in_executor_runs_elsewhere_and_returns(loop: RingEventLoop) -> None:
    name = loop.run_until_complete(
        loop.run_in_executor(None, lambda: threading.current_thread().name)
    )
    assert name != threading.current_thread().name
    loop.run_until_complete(loop.shutdown_default_executor())


def test_a_subprocess_with_pipes(loop: RingEventLoop) -> None:
    async def run() -> tuple[bytes, bytes, int]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys; d = sys.stdin.read(); sys.stdout.write(d.upper()); "
            "sys.stderr.write('err'); sys.exit(3)",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate(b"hello pipes")
        return out, err, await proc.wait()

    assert loop.run_until_complete(asyncio.wait_for(run(), 20)) == (b"HELLO PIPES", b"err", 3)
