"""Load tests for ringserve: Locust users, a saturation echo client and `compare`.

The constants here are shared by the load generators (which print them) and
`compare` (which waits for them); importing this package imports nothing
beyond the standard library.
"""

from __future__ import annotations

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
