"""Run the mock upstream for a benchmark: ``python -m benchmarks._serve_mock [--tls PEM]``.

``ssegate mock-upstream`` with one more option: ``--tls`` names a PEM file holding the
server's key and certificate chain (:mod:`benchmarks._tls`), and the mock serves https.
Prints its URL on the first line of stdout and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import ssl
import sys

from ssegate.testing import run_mock_upstream


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls", default=None, help="server key and certificate chain (PEM)")
    args = parser.parse_args(argv)
    context = None
    if args.tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls)

    def ready(url: str) -> None:
        sys.stdout.write(f"mock upstream on {url}\n")
        sys.stdout.flush()

    run_mock_upstream("127.0.0.1", args.port, on_ready=ready, ssl_context=context)


if __name__ == "__main__":
    main()
