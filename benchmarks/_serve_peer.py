"""Run one peer server: ``python -m benchmarks._serve_peer PEER``.

Binds ``127.0.0.1`` on a free port (or ``--port``), prints ``PORT <n>`` on stdout, and serves
until killed. The listening socket exists before the framework is imported, so a client may
connect at once: the kernel holds the connection until the server accepts it. (granian binds
its own socket, so for it the port is chosen first and the caller retries the connect.)

Every peer runs on uvloop, with access logs off, a 4096 backlog and the soft file-descriptor
limit raised to the hard one (10,000 idle connections).
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import sys


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def _announce(port: int) -> None:
    sys.stdout.write(f"PORT {port}\n")
    sys.stdout.flush()


def _serve_uvicorn(app: object, sock: socket.socket, *, shutdown_aware: bool) -> None:
    import uvicorn

    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        backlog=4096,
        lifespan="on",
    )
    if shutdown_aware:
        from ssegate.server import ShutdownAwareServer

        server: uvicorn.Server = ShutdownAwareServer(config)
    else:
        server = uvicorn.Server(config)
    server.run(sockets=[sock])


def _serve_bare(sock: socket.socket) -> None:
    import asyncio

    import uvloop

    from ._peers import BareProtocol

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: BareProtocol(loop), sock=sock, backlog=4096)
        await server.serve_forever()

    uvloop.run(main())


def _serve_aiohttp(sock: socket.socket) -> None:
    import asyncio

    import uvloop
    from aiohttp import web

    from ._peers import aiohttp_sse_app

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(aiohttp_sse_app(), sock=sock, access_log=None, print=None, backlog=4096)


def _serve_granian(port: int) -> None:
    from granian import Granian
    from granian.constants import Interfaces, Loops

    Granian(
        "benchmarks._peers:granian_target",
        address="127.0.0.1",
        port=port,
        interface=Interfaces.ASGI,
        workers=1,
        loop=Loops.uvloop,
        backlog=4096,
        backpressure=20_000,
        log_enabled=False,
        factory=True,
    ).serve()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("peer")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    _raise_nofile()
    peer = args.peer
    if peer == "ssegate-granian":
        port = args.port
        if not port:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
        _announce(port)
        _serve_granian(port)
        return
    sock = _listen(args.port)
    _announce(sock.getsockname()[1])
    if peer == "bare":
        _serve_bare(sock)
    elif peer == "aiohttp-sse":
        _serve_aiohttp(sock)
    elif peer == "relay":
        from ._relay import relay_app

        _serve_uvicorn(relay_app(), sock, shutdown_aware=False)
    else:
        from ._peers import APPS

        _serve_uvicorn(APPS[peer](), sock, shutdown_aware=peer == "ssegate")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
