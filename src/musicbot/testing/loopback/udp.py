"""The voice UDP endpoint: one Trio datagram socket on 127.0.0.1 for every guild's session."""

from __future__ import annotations

import contextlib

import trio

from musicbot.testing.loopback.voice import VoiceServer


async def open_udp_socket() -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    return sock


async def serve_udp(sock: trio.socket.SocketType, voice: VoiceServer) -> None:
    """Answer IP discovery and record RTP until cancelled. Arrival times are trio.current_time()."""
    while True:
        try:
            datagram, (address, port) = await sock.recvfrom(4096)
        except ConnectionResetError:  # an ICMP "port unreachable" from an earlier reply
            continue
        reply = voice.on_datagram(datagram, address, port)
        if reply is not None:
            # If the client's socket is gone, so is the reply, as on a real network.
            with contextlib.suppress(OSError):
                await sock.sendto(reply, (address, port))
