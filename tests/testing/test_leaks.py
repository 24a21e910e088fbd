"""The leak census the fault suites use: it must see what a fault could leave behind."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.lowlevel

from musicbot.testing.leaks import census, no_leaks_since


async def test_a_leftover_task_is_named_and_its_end_is_waited_for() -> None:
    before = census()
    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def lingering() -> None:
            await done.wait()

        nursery.start_soon(lingering, name="GuildPlayer(42)")
        await trio.lowlevel.checkpoint()
        with pytest.raises(AssertionError, match=r"GuildPlayer\(42\)"):
            await no_leaks_since(before, within=0.2)
        nursery.start_soon(_set_later, done)
        await no_leaks_since(before, within=5)


async def _set_later(event: trio.Event) -> None:
    await trio.sleep(0.1)
    event.set()


async def test_a_child_process_and_a_socket_are_counted() -> None:
    before = census()
    process = await trio.lowlevel.open_process(["sleep", "30"])
    try:
        with pytest.raises(AssertionError, match="children 0 -> 1"):
            await no_leaks_since(before, within=0.2)
    finally:
        process.kill()
        await process.wait()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as leaked:
        leaked.bind(("127.0.0.1", 0))
        with pytest.raises(AssertionError, match="fds"):
            await no_leaks_since(before, within=0.2)
    await no_leaks_since(before, within=1)


async def test_tcp_sockets_on_an_ignored_port_are_not_counted() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        before = census(ignore_ports={port})
        with socket.create_connection(("127.0.0.1", port)):
            accepted, _ = server.accept()
            with accepted:
                await no_leaks_since(before, ignore_ports={port}, within=0.2)
                with pytest.raises(AssertionError, match="fds"):
                    await no_leaks_since(before, within=0.2)
