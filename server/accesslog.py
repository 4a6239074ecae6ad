"""``--access-log``: the "server.access" logger, written by a thread, never by the loop.

Why a queue and a thread rather than a buffer flushed once per loop pass: a
flush is a ``write`` to stdout, and stdout may be a full pipe (a log
shipper that fell behind), a slow terminal or journald applying
backpressure.  Done by the loop, that write blocks every connection; done
by a `logging.handlers.QueueListener` thread, it blocks only that thread,
which releases the GIL while it waits.  What stays on the loop per
response is one `logging.LogRecord` and one ``SimpleQueue.put`` (a C call
without a lock); `_DeferredQueueHandler` leaves the message's formatting to
the thread too (the arguments are str, int and float, so formatting later
gives the same text).  The queue is unbounded: if stdout stops being read
altogether, lines wait in memory rather than stall the server.

Lines go to stdout (uvicorn's access log does too), after the JSON
"listening" line; a handler of one's own can be added to the logger.  The
logger's level follows ``--log-level``: with ``warning`` or ``error`` the
log is not installed at all, so it costs nothing.
"""

from __future__ import annotations

import logging
import queue
from logging.handlers import QueueHandler, QueueListener
from typing import TextIO

ACCESS_LOGGER: str = "server.access"


class _DeferredQueueHandler(QueueHandler):
    """A QueueHandler that enqueues the record as it is, unformatted."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


class AccessLog:
    """The access log's handler and writer thread, for one server run.

    Args:
        stream: where the lines go (stdout).
        level: the server's ``--log-level``.
    """

    def __init__(self, stream: TextIO, level: str) -> None:
        self.logger = logging.getLogger(ACCESS_LOGGER)
        self._stream = stream
        self._enabled = logging.getLevelName(level.upper()) <= logging.INFO
        self._handler: QueueHandler | None = None
        self._listener: QueueListener | None = None

    def start(self) -> logging.Logger | None:
        """Install the handler and start the thread; the logger to log to, or None
        if the log level leaves no access lines."""
        if not self._enabled:
            return None
        records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        writer = logging.StreamHandler(self._stream)
        writer.setFormatter(logging.Formatter("%(message)s"))
        self._listener = QueueListener(records, writer)
        self._handler = _DeferredQueueHandler(records)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False  # not also through the root's stderr handler
        self.logger.addHandler(self._handler)
        self._listener.start()
        return self.logger

    def stop(self) -> None:
        """Write what is queued, stop the thread, remove the handler; safe twice."""
        if self._handler is not None:
            self.logger.removeHandler(self._handler)
            self._handler = None
        if self._listener is not None:
            self._listener.stop()  # writes every record queued before it returns
            self._listener = None
