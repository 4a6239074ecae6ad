"""What only the binding's tests and benchmarks need, kept out of `Ring`.

`TestingRing` adds IORING_OP_NOP, the op that completes at once and touches
no fd: the cheapest way to measure a ring's own cost (``loadtest.ring_bench``)
and to fill or overflow its queues in tests.
"""

from __future__ import annotations

from uring_backend.ring import Ring, lib


class TestingRing(Ring):
    """A `Ring` that can also queue NOPs."""

    __test__ = False  # not a pytest test class, whatever its name says

    def prep_nop(self, user_data: int) -> None:
        """Queue a NOP: it completes with res 0 and flags 0 at the next submit."""
        self._queue(lib.urb_prep_nop, user_data)
