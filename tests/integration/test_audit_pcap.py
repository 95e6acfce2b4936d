"""A real PostgreSQL session, captured by a loopback relay through write_session_bytes, exported
with `audit export --pcap` and decoded as PostgreSQL by tshark."""

import asyncio
import shutil
import subprocess

import psycopg
from click.testing import CliRunner

from interceptor.audit import open_sink
from interceptor.audit.cli import audit
from pg_fixture import PgServer

FLOW = "flow-pcap-1"


async def _pipe(reader, writer, sink, direction):
    while data := await reader.read(65536):
        sink.write_session_bytes(FLOW, direction, data)
        writer.write(data)
        await writer.drain()
    writer.close()


async def _captured_session(pg: PgServer, sink) -> None:
    """Relay one client connection to the server, recording both directions, and run a query."""

    async def relay(client_reader, client_writer):
        server_reader, server_writer = await asyncio.open_connection(pg.host, pg.port)
        await asyncio.gather(_pipe(client_reader, server_writer, sink, "up"),
                             _pipe(server_reader, client_writer, sink, "down"))

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dsn = f"host=127.0.0.1 port={port} user={pg.user} password={pg.password} dbname=postgres sslmode=disable"
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (await conn.execute("SELECT 42 AS answer")).fetchone()
        assert row == (42,)
    server.close()
    await server.wait_closed()


def test_exported_session_decodes_as_postgresql_in_tshark(tmp_path):
    tshark = shutil.which("tshark")
    assert tshark, "tshark is missing (apt-get install tshark)"
    path = tmp_path / "audit.db"
    with PgServer() as pg:
        async def run():
            sink = open_sink({"store": "sqlite", "path": str(path), "capture": True})
            await _captured_session(pg, sink)
            await sink.close()

        asyncio.run(run())
    out = tmp_path / "session.pcap"
    result = CliRunner().invoke(audit, ["export", "--pcap", FLOW, "-o", str(out), "--store", str(path)])
    assert result.exit_code == 0, result.output
    decoded = subprocess.run([tshark, "-r", str(out), "-Y", "pgsql", "-T", "fields", "-e", "pgsql.type",
                              "-e", "pgsql.query"], capture_output=True, text=True, timeout=60)
    assert decoded.returncode == 0, decoded.stderr
    assert "SELECT 42 AS answer" in decoded.stdout
    types = decoded.stdout
    for message in ("Startup message", "Simple query", "Row description", "Data row", "Ready for query"):
        assert message in types, f"{message!r} not decoded:\n{types}"
