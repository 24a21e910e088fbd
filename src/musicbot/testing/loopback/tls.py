"""A throw-away certificate authority and a server certificate for IP 127.0.0.1.

discord.py hard-codes `wss://` for the voice websocket, so the fake must speak TLS there; the
client trusts this CA through `aiohttp.TCPConnector(ssl=client_ssl_context())` or the PEM file.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme


class LoopbackTLS:
    def __init__(self, directory: Path) -> None:
        self._ca = trustme.CA(organization_name="musicbot fake Discord")
        self._server_cert = self._ca.issue_cert("127.0.0.1", "localhost")
        self.ca_pem_path = directory / "fake-discord-ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_pem_path))

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_cert.configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self._ca.configure_trust(context)
        return context
