"""RTP decryption, checked against the encryption discord.py itself uses."""

from __future__ import annotations

import struct

import nacl.secret
import pytest

from musicbot.testing.loopback import rtp


def seal(header: bytes, payload: bytes, key: bytes, counter: int) -> bytes:
    """`VoiceClient._encrypt_aead_xchacha20_poly1305_rtpsize`, restated."""
    nonce = struct.pack(">I", counter) + b"\0" * 20
    return header + nacl.secret.Aead(key).encrypt(payload, header, nonce).ciphertext + nonce[:4]


def header(sequence: int, timestamp: int, ssrc: int, *, extension: bool = False) -> bytes:
    return struct.pack(">BBHII", 0x90 if extension else 0x80, 0x78, sequence, timestamp, ssrc)


KEY = bytes(range(32))


def test_decrypts_what_discord_py_sends() -> None:
    packet = seal(header(7, 960 * 7, 1234), b"opus!", KEY, counter=41)
    assert rtp.rtp_ssrc(packet) == 1234
    assert rtp.decrypt(packet, KEY, rtp.MODES[0]) == rtp.Rtp(1234, 7, 960 * 7, b"opus!")


def test_extension_body_is_stripped() -> None:
    head = header(1, 960, 99, extension=True) + b"\xbe\xde\x00\x01"
    packet = seal(head, b"\x10\x20\x30\x40" + b"opus", KEY, counter=1)
    assert rtp.decrypt(packet, KEY, rtp.MODES[0]).payload == b"opus"


def test_tampered_or_wrong_key_is_refused() -> None:
    packet = bytearray(seal(header(1, 960, 5), b"opus", KEY, counter=2))
    packet[13] ^= 1
    with pytest.raises(ValueError, match="does not decrypt"):
        rtp.decrypt(bytes(packet), KEY, rtp.MODES[0])
    with pytest.raises(ValueError, match="does not decrypt"):
        rtp.decrypt(seal(header(1, 960, 5), b"opus", KEY, 2), bytes(32), rtp.MODES[0])


def test_ip_discovery() -> None:
    request = struct.pack(">HHI", 1, 70, 4321) + bytes(66)
    assert rtp.discovery_ssrc(request) == 4321
    reply = rtp.discovery_reply(4321, "127.0.0.1", 50000)
    assert len(reply) == 74 and reply[1] == 0x02
    assert reply[8 : reply.index(0, 8)] == b"127.0.0.1"
    assert struct.unpack_from(">H", reply, 72)[0] == 50000
    assert rtp.discovery_ssrc(reply) is None
