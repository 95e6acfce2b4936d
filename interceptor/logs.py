"""Structured logs: one JSON object per line on stderr, which journald keeps as is."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(time.time(), 3), "level": record.levelname.lower(), "logger": record.name,
                 "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # asyncssh logs every connection, login and command at INFO: agents' commands belong in the
    # audit trail (scrubbed, access-controlled), not in the daemon's log.
    logging.getLogger("asyncssh").setLevel(max(logging.getLevelName(level.upper()), logging.WARNING))
