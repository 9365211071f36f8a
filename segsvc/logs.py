"""How the server writes its log: plain text for a terminal, or JSON Lines for a log pipeline
(`segsvc serve --log-format json`): one object a line with time, level, logger, message and
the record's extra fields (what `log.info(..., extra={...})` passed), plus the traceback of
an exception under `exception`.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers of a line per call, whose INFO lines are written in batches.
BATCHED_LOGGERS = frozenset({"segsvc.access"})
LOG_FORMATS = ("text", "json")

# The attributes every LogRecord has: whatever else a record carries came as `extra`.
_STANDARD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def __init__(self) -> None:
        super().__init__()
        # The access log writes a line per call: the time text is made once per second.
        self._second = -1
        self._second_text = ""

    def _time(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._second_text}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: an extra field of another type is written as its text, never lost.
        return json.dumps(entry, ensure_ascii=False, default=str)


class BatchingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes the access log's INFO lines in batches, at most
    FLUSH_SECONDS late (or with the next other line): a write system call per line would
    cost a short call a tenth of its time. Every other record is written out at once, with
    whatever waited before it. A process killed outright loses at most the last
    FLUSH_SECONDS of access lines."""

    FLUSH_SECONDS = 0.25

    def __init__(self) -> None:
        # A buffer of our own over stderr's descriptor: sys.stderr writes out every line.
        super().__init__(open(2, "w", buffering=1 << 16, closefd=False))  # noqa: SIM115
        self._pending = False
        self._stop = threading.Event()
        threading.Thread(target=self._flush_often, name="segsvc-log-flush", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            with self.lock:  # type: ignore[union-attr]
                self.stream.write(text + self.terminator)
                if record.levelno >= logging.WARNING or record.name not in BATCHED_LOGGERS:
                    self.stream.flush()
                    self._pending = False
                else:
                    self._pending = True
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self.stream.flush()
            self._pending = False

    def _flush_often(self) -> None:
        while not self._stop.wait(self.FLUSH_SECONDS):
            if self._pending:
                self.flush()

    def close(self) -> None:
        self._stop.set()
        self.flush()
        super().close()


def configure_logging(level: str = "info", log_format: str = "text") -> None:
    """Sends every log record at `level` or above to stderr in `log_format` (text or json),
    replacing any handler the root logger had. logging.shutdown() (at exit) writes out what
    is still buffered."""
    handler = BatchingStreamHandler()
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
