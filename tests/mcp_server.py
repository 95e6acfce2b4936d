"""An MCP server FOR TESTS (a stand-in for a real tool server), built with the `mcp` package's
MCPServer over Streamable HTTP (MCP specification, "Transports: Streamable HTTP"), answering
POSTs with JSON (`--json-response`) or with server-sent events (the default).

Tools: `search_docs(query)`, `read_file(path)`, `delete_file(path)` (stateful: the file is gone
after), `get_customer(id)` (text with an e-mail address and a card number, for masking tests).
Every tool call that reaches it is appended to `--calls` (JSONL: tool, arguments), every HTTP
request to `--request-log` (JSONL: method, path, query, headers, body), so tests can prove what
was - and was not - forwarded. With `--token-file` each request needs `Authorization: Bearer
<token>` (401 otherwise).

    python tests/mcp_server.py --host H --port P [--json-response] [--token-file F]
        [--calls F] [--request-log F]     # prints "READY <port>" once listening
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DOCS = {"install": "Install with make setup, then run make run.",
        "policy": "Rules match agents, resources and operations; the first matching rule decides.",
        "masking": "Masks replace matching values in results with a fixed token."}
CUSTOMERS = {"42": ("Ada Lovelace", "ada@example.com", "4111 1111 1111 1111"),
             "7": ("Alan Turing", "alan@example.org", "5500 0000 0000 0004")}
RECORDED_BODY = 65536


def _append(path: Path | None, entry: dict[str, Any]) -> None:
    if path is not None:
        with open(path, "a") as log:
            log.write(json.dumps(entry) + "\n")


def build(calls: Path | None) -> MCPServer:
    """The tool server; each call is appended to `calls` (JSONL) before it runs."""
    server: MCPServer = MCPServer("interceptor-test-tools", instructions="Tools of a test stand-in.")
    files = {"/srv/docs/readme.txt": "Welcome to the stand-in file store.\n",
             "/srv/docs/notes.txt": "Remember: rotate keys every 90 days.\n"}

    def record(tool: str, **arguments: Any) -> None:
        _append(calls, {"time": time.time(), "tool": tool, "arguments": arguments})

    @server.tool()
    def search_docs(query: str) -> str:
        """Search the documentation; returns the matching topics with their text."""
        record("search_docs", query=query)
        hits = [f"{topic}: {text}" for topic, text in DOCS.items() if query.lower() in f"{topic} {text}".lower()]
        return "\n".join(hits) or f"no documentation matches {query!r}"

    @server.tool()
    def read_file(path: str) -> str:
        """Read a file from the stand-in's file store."""
        record("read_file", path=path)
        if path not in files:
            raise ValueError(f"no such file: {path}")
        return files[path]

    @server.tool()
    def delete_file(path: str) -> str:
        """Delete a file from the stand-in's file store (it is gone afterwards)."""
        record("delete_file", path=path)
        if files.pop(path, None) is None:
            raise ValueError(f"no such file: {path}")
        return f"deleted {path}"

    @server.tool()
    def get_customer(id: str) -> str:
        """A customer's record: name, e-mail address and card number."""
        record("get_customer", id=id)
        if id not in CUSTOMERS:
            raise ValueError(f"no customer {id}")
        name, email, card = CUSTOMERS[id]
        return f"Customer {id}: {name}, email {email}, card {card}"

    return server


class Recorder:
    """ASGI middleware: appends each HTTP request (with its body) to a JSONL file and, with a
    token, answers 401 to a request without `Authorization: Bearer <token>`."""

    def __init__(self, app: ASGIApp, token: str | None, request_log: Path | None) -> None:
        self.app, self.token, self.request_log = app, token, request_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = bytearray()
        messages: list[Message] = []
        while True:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
        _append(self.request_log, {"time": time.time(), "method": scope["method"], "path": scope["path"],
                                   "query": scope["query_string"].decode("latin-1"), "headers": headers,
                                   "body": body[:RECORDED_BODY].decode("utf-8", "replace")})
        if self.token is not None and dict(headers).get("authorization") != f"Bearer {self.token}":
            await _unauthorized(send)
            return

        async def replay() -> MutableMapping[str, Any]:
            return messages.pop(0) if messages else await receive()
        await self.app(scope, replay, send)


async def _unauthorized(send: Send) -> None:
    body = b'{"error": "unauthorized", "error_description": "a bearer token is required"}'
    await send({"type": "http.response.start", "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mcp_server", description="MCP tool server test stand-in")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--json-response", action="store_true", help="answer POSTs with JSON, not SSE")
    parser.add_argument("--token-file", type=Path)
    parser.add_argument("--calls", type=Path, help="JSONL file each tool call is appended to")
    parser.add_argument("--request-log", type=Path, help="JSONL file each HTTP request is appended to")
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> None:
    token = args.token_file.read_text().strip() if args.token_file else None
    app = build(args.calls).streamable_http_app(
        json_response=args.json_response, host=args.host,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    config = uvicorn.Config(Recorder(app, token, args.request_log), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.02)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, lambda: setattr(server, "should_exit", True))
    await serving


if __name__ == "__main__":
    asyncio.run(_main(_arguments(sys.argv[1:])))
