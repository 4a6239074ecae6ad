"""Load tests for ringserve: Locust users, the load clients, `compare` and `soak`.

The constants here are shared by the load generators (which print them) and
`compare` (which waits for them); importing this package imports nothing
beyond the standard library.
"""

from __future__ import annotations

import argparse
import resource
from pathlib import Path
from typing import Final

# The checkout: where `python -m server` and the C sources are found.
PROJECT_ROOT: Final = Path(__file__).resolve().parent.parent

# Every echo message is this long, so the server's bytes_in counts messages.
ECHO_MESSAGE_BYTES: Final = 64

# A load generator prints these on stderr when its measured window opens and
# closes (after the warm-up, and as it stops); `compare` snapshots the
# server's counters when it reads them.
WINDOW_START_MARKER: Final = "ringserve-loadtest: measurement window start"
WINDOW_END_MARKER: Final = "ringserve-loadtest: measurement window end"


def non_negative_float(text: str) -> float:
    """An argparse type: seconds that may be 0 (the server's validators cover the rest)."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{value} must not be negative")
    return value


def raise_fd_limit(needed: int) -> None:
    """Lift our soft RLIMIT_NOFILE towards `needed`, up to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new_soft = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
