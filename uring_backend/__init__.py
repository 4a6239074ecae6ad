"""A cffi binding of liburing, just wide enough for a TCP server.

Importing this package imports the compiled extension; callers that must
work without it (the epoll backend) never import it.
"""

from __future__ import annotations

from uring_backend.ring import Completion, Ring, RingStatistics, UringUnavailable

__all__ = ["Completion", "Ring", "RingStatistics", "UringUnavailable"]
