"""A real audit store filled with given records, for the commands that read the trail."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from interceptor.audit import AuditEvent, open_sink


def fill_store(path: str | Path, events: Iterable[AuditEvent | Mapping[str, Any]]) -> None:
    """Write `events` (AuditEvents, or their fields as mappings) to the SQLite audit store at
    `path` (chain host-a) through the daemon's own sink, and close it."""
    async def run() -> None:
        sink = open_sink({"store": "sqlite", "path": str(path), "chain_id": "host-a"})
        for event in events:
            await sink.write(event if isinstance(event, AuditEvent) else AuditEvent(**event))
        await sink.close()

    asyncio.run(run())
