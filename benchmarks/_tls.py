"""A certificate authority and a server certificate for ``127.0.0.1``, made at run time.

The https upstream (the mock on TLS) presents the server certificate; the relays are told to
trust the CA through ``SSL_CERT_FILE``, which httpx honours (so does ssegate's gateway, whose
upstream client is httpx's), and the load generator reading the upstream directly loads the CA
into its client context. Nothing is written outside a temporary directory.
"""

from __future__ import annotations

import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA's certificate, and the server's key and certificate chain."""

    ca: Path
    server: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts the CA (and checks the host name)."""
        return ssl.create_default_context(cafile=str(self.ca))

    def server_context(self) -> ssl.SSLContext:
        """The server's context, holding its certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.server))
        return context


_FILES: TlsFiles | None = None


def tls_files() -> TlsFiles:
    """The files for this process' run (made once, in a temporary directory)."""
    global _FILES
    if _FILES is None:
        import trustme

        directory = Path(tempfile.mkdtemp(prefix="ssegate-bench-tls-"))
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        files = TlsFiles(directory / "ca.pem", directory / "server.pem")
        ca.cert_pem.write_to_path(str(files.ca))
        cert.private_key_and_cert_chain_pem.write_to_path(str(files.server))
        _FILES = files
    return _FILES
