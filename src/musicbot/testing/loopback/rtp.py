"""Voice UDP packets: IP discovery and RTP with `aead_xchacha20_poly1305_rtpsize` (pure functions).

rtpsize: the RTP header (12 bytes, the CSRCs and, with the X bit, the 4-byte extension header) is
the AEAD's additional data; the payload is encrypted; a 4-byte big-endian counter is appended and
the nonce is that counter followed by 20 zero bytes. The extension body, when present, is the
start of the decrypted payload.
"""

from __future__ import annotations

import struct

import attrs
import nacl.exceptions
import nacl.secret

MODES = ("aead_xchacha20_poly1305_rtpsize",)
DISCOVERY_SIZE = 74


@attrs.frozen
class Rtp:
    ssrc: int
    sequence: int
    timestamp: int
    payload: bytes


def discovery_ssrc(datagram: bytes) -> int | None:
    """The SSRC of an IP discovery request, or None if this is not one."""
    if len(datagram) != DISCOVERY_SIZE:
        return None
    kind, length, ssrc = struct.unpack_from(">HHI", datagram)
    return ssrc if kind == 1 and length == 70 else None


def discovery_reply(ssrc: int, address: str, port: int) -> bytes:
    reply = bytearray(DISCOVERY_SIZE)
    struct.pack_into(">HHI", reply, 0, 2, 70, ssrc)
    encoded = address.encode("ascii")
    reply[8 : 8 + len(encoded)] = encoded
    struct.pack_into(">H", reply, DISCOVERY_SIZE - 2, port)
    return bytes(reply)


def rtp_ssrc(datagram: bytes) -> int | None:
    """The SSRC of an RTP packet (version 2), or None if this is not one."""
    if len(datagram) < 12 or datagram[0] >> 6 != 2:
        return None
    return int(struct.unpack_from(">I", datagram, 8)[0])


def decrypt(datagram: bytes, key: bytes, mode: str) -> Rtp:
    """Open an RTP packet; raises ValueError if it is malformed or does not authenticate."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not served")
    first, _, sequence, timestamp, ssrc = struct.unpack_from(">BBHII", datagram)
    header_size = 12 + 4 * (first & 0x0F)
    has_extension = bool(first & 0x10)
    if has_extension:
        header_size += 4
    if len(datagram) < header_size + 16 + 4:
        raise ValueError("packet too short")
    header, body, counter = datagram[:header_size], datagram[header_size:-4], datagram[-4:]
    try:
        plain = nacl.secret.Aead(key).decrypt(body, header, counter + b"\0" * 20)
    except nacl.exceptions.CryptoError as exc:
        raise ValueError(f"packet does not decrypt: {exc}") from None
    if has_extension:
        (words,) = struct.unpack_from(">H", header, header_size - 2)
        plain = plain[4 * words :]
    return Rtp(ssrc, sequence, timestamp, plain)
