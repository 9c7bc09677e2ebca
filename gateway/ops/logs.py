"""One-line structured logs.

Messages are written as `event key=value ...`; the formatter prefixes time, level and logger, so
every line is greppable and machine-parseable without a JSON dependency in the hot path.
"""

from __future__ import annotations

import logging
import sys
import time


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        line = f"ts={ts} level={record.levelname.lower()} logger={record.name} {record.getMessage()}"
        if record.exc_info:
            # Tracebacks stay on one line so a log shipper keeps them with their event.
            line += " exc=" + repr(self.formatException(record.exc_info))
        return line


def setup_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    # The websockets library logs every connection at INFO; that is per-client noise here.
    logging.getLogger("websockets").setLevel(logging.WARNING)
