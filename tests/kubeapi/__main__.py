"""Run the Kubernetes API stand-in: `python -m kubeapi --host H --port P [--cert C --key K]
[--token-file F] [--request-log L] [--forbid-namespace NS]...` (with tests/ on PYTHONPATH).

Prints `READY <port>` on stdout once listening; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from .server import GZIP_MIN, KubeApiServer
from .wire import listen, serve, tls_context


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kubeapi", description="Kubernetes API test stand-in")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert", help="PEM chain; with --key serves HTTPS")
    parser.add_argument("--key")
    parser.add_argument("--token-file", type=Path, help="bearer token required on every request")
    parser.add_argument("--request-log", type=Path, help="JSONL file every request is appended to")
    parser.add_argument("--forbid-namespace", action="append", default=[])
    parser.add_argument("--log-interval", type=float, default=0.5, help="seconds between followed log lines")
    parser.add_argument("--gzip-min", type=int, default=GZIP_MIN, help="gzip bodies from this many bytes")
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> None:
    token = args.token_file.read_text().strip() if args.token_file else None
    handler = KubeApiServer(token, args.request_log, tuple(args.forbid_namespace), args.log_interval, args.gzip_min)
    sock = listen(args.host, args.port)
    context = tls_context(args.cert, args.key) if args.cert else None
    server = await serve(sock, handler.handle, context)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(_main(_arguments(sys.argv[1:])))
