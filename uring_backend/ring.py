"""The only module that touches the compiled liburing binding.

Everything above this module sees ints, bytes and small dataclasses; cdata
never leaves it.  How the ring is used:

- ``prep_*`` methods queue one SQE each (one foreign call, no allocation).
- ``send(slot, fd, data)`` appends to the pass's sends; nothing crosses into
  C until ``wait()``.  The ring keeps a send queue per *slot* (a small
  integer the caller gives each connection): it copies the bytes into memory
  it owns, finishes short sends itself, keeps one send in flight per slot so
  a stream's bytes leave in order, and consumes successful completions
  without reporting them.  The caller hears only what it must act on:
  ``PAUSE``/``RESUME`` as a slot's unsent bytes cross the high and low marks,
  ``IDLE`` once a watched slot has nothing queued or in flight, and
  ``SEND_ERROR``.  Reports come with the completions, with the ring's own
  op numbers (``OWN_OPS`` and above) in the top byte of ``user_data``.
- ``wait()`` is the loop's single crossing per pass: the C side gives back
  the receive buffers of the previous batch (their bytes were copied out
  during the pass), queues the pass's sends, submits everything with one
  ``io_uring_enter``, waits for a completion beyond the sends that complete
  inline, and drains the CQ once into preallocated arrays: receive
  completions carrying bytes in flat arrays of their own, everything else
  beside them.  It waits again, in C, when all that arrived were the send
  queues' own completions.
- Memory handed to the kernel stays valid until its completion: send bytes
  are the ring's own copies, freed by the completion (or left allocated if
  the ring is torn down first); receive buffers are the ring's slab.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Any, Final

from uring_backend import _liburing

ffi: Any = _liburing.ffi
lib: Any = _liburing.lib

F_BUFFER: Final[int] = lib.IORING_CQE_F_BUFFER
F_MORE: Final[int] = lib.IORING_CQE_F_MORE
BUFFER_SHIFT: Final[int] = lib.IORING_CQE_BUFFER_SHIFT

SETUP_SQPOLL: Final[int] = lib.IORING_SETUP_SQPOLL
SETUP_CQSIZE: Final[int] = lib.IORING_SETUP_CQSIZE
SETUP_SUBMIT_ALL: Final[int] = lib.IORING_SETUP_SUBMIT_ALL
SETUP_COOP_TASKRUN: Final[int] = lib.IORING_SETUP_COOP_TASKRUN
SETUP_SINGLE_ISSUER: Final[int] = lib.IORING_SETUP_SINGLE_ISSUER
SETUP_DEFER_TASKRUN: Final[int] = lib.IORING_SETUP_DEFER_TASKRUN
FEAT_NODROP: Final[int] = lib.IORING_FEAT_NODROP
OWN_OPS: Final[int] = lib.URB_OWN_OPS  # user_data top bytes from here up are the ring's
SEND_OP: Final[int] = lib.URB_SEND_OP
IDLE: Final[int] = lib.URB_IDLE
PAUSE: Final[int] = lib.URB_PAUSE
RESUME: Final[int] = lib.URB_RESUME
SEND_ERROR: Final[int] = lib.URB_SEND_ERROR
POLLIN: Final = 0x001
POLLOUT: Final = 0x004
POLLERR: Final = 0x008
POLLHUP: Final = 0x010

# Tried in order until the kernel accepts one.  Without DEFER_TASKRUN or
# COOP_TASKRUN, completions are posted by interrupting the task (task-work
# IPIs) and a measured prototype ran *slower* than epoll; so both are tried
# first.  DEFER_TASKRUN needs SINGLE_ISSUER (6.1+), COOP_TASKRUN 5.19+.
_FLAG_LADDER: Final = (
    ("defer", SETUP_SINGLE_ISSUER | SETUP_DEFER_TASKRUN),
    ("coop", SETUP_SINGLE_ISSUER | SETUP_COOP_TASKRUN),
    ("coop", SETUP_COOP_TASKRUN),
    ("none", 0),
)

BUFFER_GROUP: Final[int] = 0
MAX_BUFFERS: Final[int] = 32768  # kernel limit on a provided-buffer ring
MAX_SQ_ENTRIES: Final[int] = 32768  # IORING_MAX_ENTRIES
MAX_CQ_ENTRIES: Final[int] = 65536  # IORING_MAX_CQ_ENTRIES
CLOSE_DRAIN_TIMEOUT_NS: Final[int] = 1_000_000_000
_CLOSE_CANCEL_UD: Final[int] = 0xFFFF_FFFF_FFFF_FFFF

# Completions are reported as (user_data, res, flags, data): `data` holds the
# bytes copied out of a provided buffer when F_BUFFER is set, else None.
Completion = tuple[int, int, int, "bytes | None"]


class UringUnavailable(RuntimeError):
    """No io_uring instance can be created here; the message names why."""

    def __init__(self, err: int, why: str | None = None) -> None:
        self.errno = err
        super().__init__(_explain(err) if why is None else f"io_uring unusable: {why}.")


def _explain(err: int) -> str:
    name = errno.errorcode.get(err, str(err))
    base = f"io_uring_setup failed: {os.strerror(err)} ({name})."
    if err == errno.EPERM:
        return (
            f"{base} io_uring is forbidden here: either a seccomp filter "
            "denies io_uring_setup (Docker's default profile does since "
            "Engine 25; run with --security-opt "
            "seccomp=docker/seccomp-io_uring.json) or the sysctl "
            f"kernel.io_uring_disabled is set (now: {_sysctl_disabled()}; "
            "0 allows it). Use --backend epoll to run without io_uring."
        )
    if err == errno.ENOSYS:
        return (
            f"{base} The kernel has no io_uring (older than 5.1 or built "
            "without CONFIG_IO_URING), or a seccomp filter answers ENOSYS "
            "(podman's default profile does; run with --security-opt "
            "seccomp=docker/seccomp-io_uring.json). Use --backend epoll to "
            "run without io_uring."
        )
    if err == errno.ENOMEM:
        return (
            f"{base} The locked-memory limit (ulimit -l) is too small for "
            "the ring; raise it or lower --ring-entries."
        )
    if err == errno.EINVAL:
        return f"{base} The kernel rejected the ring parameters (kernel too old?)."
    return base


def _sysctl_disabled() -> str:
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            return f.read().strip()
    except OSError:
        return "not present"


def _check(ret: int) -> int:
    """Turn liburing's negative-errno convention into OSError."""
    if ret < 0:
        raise OSError(-ret, os.strerror(-ret))
    return ret


@dataclass(frozen=True, slots=True)
class RingStatistics:
    """Counters that show batching: enters per op is the point of io_uring."""

    io_uring_enter_calls: int
    sqes_submitted: int
    cqes_reaped: int
    ops_in_flight: int  # prep_* ops, and the send queues' sends
    sq_full_submits: int
    bytes_sent: int  # by the send queues


class Ring:
    """One io_uring instance with a provided-buffer ring for receives.

    Args:
        entries: SQ size, rounded up to a power of two by the kernel.
        cq_factor: CQ size as a multiple of the SQ size; multishot ops post
            many completions per submission.
        buffers: number of provided receive buffers (power of two).
        buffer_size: bytes per receive buffer.
        sqpoll: use a kernel SQ polling thread (burns a CPU; opt-in).
        send_slots: send queues (slots 0 .. send_slots - 1).
        send_high, send_low: the unsent bytes per slot above which PAUSE,
            and after it at or below which RESUME, is reported.

    Raises:
        UringUnavailable: the kernel refused to create the ring.
        ValueError: bad sizes.
    """

    def __init__(
        self,
        entries: int = 256,
        *,
        cq_factor: int = 8,
        buffers: int = 1024,
        buffer_size: int = 4096,
        sqpoll: bool = False,
        send_slots: int = 1024,
        send_high: int = 1 << 20,
        send_low: int = 256 << 10,
    ) -> None:
        if entries < 1 or entries & (entries - 1) or entries > MAX_SQ_ENTRIES:
            raise ValueError(f"ring entries must be a power of two <= {MAX_SQ_ENTRIES}")
        if cq_factor < 1 or entries * cq_factor > MAX_CQ_ENTRIES:
            raise ValueError(f"entries * cq_factor must be between 1 and {MAX_CQ_ENTRIES}")
        if buffers < 1 or buffers & (buffers - 1) or buffers > MAX_BUFFERS:
            raise ValueError(f"buffers must be a power of two <= {MAX_BUFFERS}")
        if buffer_size < 1:
            raise ValueError("buffer_size must be positive")
        self._r: Any = ffi.gc(lib.urb_new(), lib.urb_free)
        if self._r == ffi.NULL:
            raise MemoryError("urb_new")
        base = SETUP_CQSIZE | SETUP_SUBMIT_ALL | (SETUP_SQPOLL if sqpoll else 0)
        ret = -errno.EINVAL
        self.taskrun = "none"
        for name, extra in _FLAG_LADDER:
            if sqpoll and extra & SETUP_DEFER_TASKRUN:
                continue  # DEFER_TASKRUN cannot be combined with SQPOLL
            ret = lib.urb_init(self._r, entries, entries * cq_factor, base | extra, 1000)
            if ret != -errno.EINVAL:
                self.taskrun = name
                break
        if ret < 0:
            raise UringUnavailable(-ret)
        self.setup_flags: int = lib.urb_flags(self._r)
        self.features: int = lib.urb_features(self._r)
        if not self.features & FEAT_NODROP:
            # Multishot ops post CQEs the submitter never asked for one by
            # one; without NODROP (5.5+) an overflowing CQ loses them.
            lib.urb_exit(self._r)
            raise UringUnavailable(errno.EINVAL, "the kernel lacks IORING_FEAT_NODROP (5.5+)")
        self.sq_entries: int = lib.urb_sq_entries(self._r)
        self.cq_entries: int = lib.urb_cq_entries(self._r)
        ret = lib.urb_setup_bufs(self._r, buffers, buffer_size, BUFFER_GROUP)
        if ret < 0:
            lib.urb_exit(self._r)
            if ret == -errno.ENOMEM:
                raise UringUnavailable(errno.ENOMEM)
            _check(ret)
        self.buffers = buffers
        self.buffer_size = buffer_size
        self._slab: Any = ffi.buffer(lib.urb_slab(self._r), buffers * buffer_size)
        # Preallocated once: the drain writes here, never a per-event cdata.
        self._max = self.cq_entries
        self._ud: Any = ffi.new("uint64_t[]", self._max)
        self._res: Any = ffi.new("int32_t[]", self._max)
        self._flags: Any = ffi.new("uint32_t[]", self._max)
        self._data_ud: Any = ffi.new("uint64_t[]", self._max)
        self._data_bid: Any = ffi.new("uint16_t[]", self._max)
        self._data_len: Any = ffi.new("int32_t[]", self._max)
        self._counts: Any = ffi.new("unsigned[2]")
        if lib.urb_outs_init(self._r, send_slots, send_high, send_low) < 0:
            lib.urb_exit(self._r)
            raise MemoryError("send queues")
        self.send_slots = send_slots
        # The pass's sends and watches, handed to C by the next wait().
        self._send_slots: list[int] = []
        self._send_fds: list[int] = []
        self._send_data: list[bytes] = []
        self._watches: list[int] = []
        self._counters: Any = ffi.new("uint64_t[5]")
        self._inflight: dict[int, bytes | None] = {}
        self._closed = False

    # -- queueing -----------------------------------------------------------
    # Each prep checks that `user_data` is free, queues the SQE, and only then
    # records the op as in flight: a prep that raises leaves nothing behind.

    def _queue(self, shim: Any, user_data: int, *args: int) -> None:
        """Queue one SQE with C shim `shim(ring, *args, user_data)`."""
        if user_data in self._inflight:
            raise ValueError(f"user_data {user_data:#x} is already in flight")
        if user_data >> 56 >= OWN_OPS:
            raise ValueError(
                f"user_data {user_data:#x}: top bytes from {OWN_OPS:#x} are the ring's"
            )
        _check(shim(self._r, *args, user_data))
        self._inflight[user_data] = None

    def prep_accept_multishot(self, fd: int, user_data: int) -> None:
        """Accept connections on listening socket `fd` until cancelled.

        Each completion's `res` is a new non-blocking, close-on-exec fd.
        """
        self._queue(lib.urb_prep_accept_multishot, user_data, fd)

    def prep_recv_multishot(self, fd: int, user_data: int) -> None:
        """Receive into provided buffers until EOF, error or cancel.

        Completions carry the bytes; the buffer goes back to the kernel on
        the next `wait()`.  `res == 0` is EOF; `-ENOBUFS` means the buffer
        ring ran dry and the recv must be re-armed.
        """
        self._queue(lib.urb_prep_recv_multishot, user_data, fd)

    def prep_close(self, fd: int, user_data: int) -> None:
        self._queue(lib.urb_prep_close, user_data, fd)

    def prep_shutdown(self, fd: int, how: int, user_data: int) -> None:
        self._queue(lib.urb_prep_shutdown, user_data, fd, how)

    def prep_cancel(self, target: int, user_data: int) -> None:
        """Cancel the op queued with `target` as its user_data."""
        self._queue(lib.urb_prep_cancel, user_data, target)

    def prep_cancel_fd(self, fd: int, user_data: int) -> None:
        """Cancel every op in flight on `fd`."""
        self._queue(lib.urb_prep_cancel_fd, user_data, fd)

    def prep_timeout(self, seconds: float, user_data: int) -> None:
        """Complete with -ETIME after `seconds`."""
        self._queue(lib.urb_prep_timeout, user_data, int(seconds * 1e9))

    def prep_poll_multishot(self, fd: int, user_data: int) -> None:
        """Post a completion each time `fd` becomes readable."""
        self._queue(lib.urb_prep_poll_multishot, user_data, fd, POLLIN)

    def prep_poll(self, fd: int, events: int, user_data: int) -> None:
        """Complete once `fd` is ready for poll(2) `events` (at once if it is); res is
        the ready mask (POLLIN, POLLOUT, POLLERR, POLLHUP) or -errno."""
        self._queue(lib.urb_prep_poll, user_data, fd, events)

    # -- the batch ---------------------------------------------------------

    # -- send queues ------------------------------------------------------

    def send(self, slot: int, fd: int, data: bytes) -> None:
        """Queue `data` for `fd` on send queue `slot`; it goes at the next `wait()`.

        The bytes are copied into the ring's memory then, so `data` need not
        outlive this call.  An empty `data` is ignored.
        """
        self._send_slots.append(slot)
        self._send_fds.append(fd)
        self._send_data.append(data)

    def watch(self, slot: int) -> None:
        """Report IDLE once `slot` has nothing queued or in flight (after this pass's sends)."""
        self._watches.append(slot)

    def drop(self, slot: int) -> bool:
        """Drop what `slot` has not sent (this pass's sends included); ignore later sends.

        Returns:
            True if a send is still in flight: IDLE is reported after its
            completion (cancel it to hurry it); False if the slot is idle now.
        """
        if slot in self._send_slots:
            keep = [i for i, s in enumerate(self._send_slots) if s != slot]
            self._send_slots = [self._send_slots[i] for i in keep]
            self._send_fds = [self._send_fds[i] for i in keep]
            self._send_data = [self._send_data[i] for i in keep]
        return bool(_check(lib.urb_out_drop(self._r, slot)))

    def sending(self, slot: int) -> bool:
        """True while a send of `slot`'s queue is queued or in flight in the kernel."""
        return bool(lib.urb_out_inflight(self._r, slot))

    def reset(self, slot: int) -> None:
        """Make an idle `slot` new for its next owner (it must be idle: see `drop`)."""
        lib.urb_out_reset(self._r, slot)

    # -- the batch ---------------------------------------------------------

    def wait(self, timeout: float | None = None) -> tuple[list[int], list[bytes], list[Completion]]:
        """Queue the pass's sends, submit everything, wait, collect, in one enter.

        Args:
            timeout: seconds to wait for a completion the caller sees; None
                waits forever, 0 only polls.

        Returns:
            ``(data_uds, datas, others)``: the user_data and bytes of each
            receive completion that carries bytes (F_BUFFER with F_MORE,
            res > 0), in CQ order; and every other completion or report as
            ``(user_data, res, flags, data)``, data being the bytes of a
            buffer it carries, else None.  All empty on timeout or signal.

        Raises:
            OSError: io_uring_enter failed for another reason.
        """
        sends = self._send_data
        nsend = len(sends)
        if nsend:
            blob = sends[0] if nsend == 1 else b"".join(sends)
            lens: Any = list(map(len, sends))
            slots: Any = self._send_slots
            fds: Any = self._send_fds
            self._send_slots, self._send_fds, self._send_data = [], [], []
        else:
            blob = lens = slots = fds = ffi.NULL
        watches: Any = self._watches
        nwatch = len(watches)
        if nwatch:
            self._watches = []
        else:
            watches = ffi.NULL
        timeout_ns = -1 if timeout is None else max(0, int(timeout * 1e9))
        counts = self._counts
        ret = lib.urb_cycle(
            self._r,
            blob,
            lens,
            slots,
            fds,
            nsend,
            watches,
            nwatch,
            timeout_ns,
            self._data_ud,
            self._data_bid,
            self._data_len,
            self._ud,
            self._res,
            self._flags,
            self._max,
            counts,
        )
        if ret < 0:
            if ret in (-errno.ETIME, -errno.EINTR, -errno.EAGAIN, -errno.EBUSY):
                return [], [], []
            _check(ret)
        nd = counts[0]
        n = counts[1]
        slab = self._slab
        size = self.buffer_size
        data_uds: list[int] = ffi.unpack(self._data_ud, nd)
        datas = [
            slab[bid * size : bid * size + length]
            for bid, length in zip(
                ffi.unpack(self._data_bid, nd), ffi.unpack(self._data_len, nd), strict=True
            )
        ]
        others: list[Completion] = []
        if n:
            pop = self._inflight.pop
            append = others.append
            for ud, res, fl in zip(
                ffi.unpack(self._ud, n),
                ffi.unpack(self._res, n),
                ffi.unpack(self._flags, n),
                strict=True,
            ):
                if not fl & F_MORE:
                    pop(ud, None)
                if fl & F_BUFFER:
                    off = (fl >> BUFFER_SHIFT) * size
                    append((ud, res, fl, slab[off : off + res]))
                else:
                    append((ud, res, fl, None))
        return data_uds, datas, others

    def in_flight(self, user_data: int) -> bool:
        return user_data in self._inflight

    def statistics(self) -> RingStatistics:
        lib.urb_counters(self._r, self._counters)
        c = self._counters
        return RingStatistics(
            io_uring_enter_calls=int(c[0]),
            sqes_submitted=int(c[1]),
            cqes_reaped=int(c[2]),
            ops_in_flight=len(self._inflight) + lib.urb_outs_busy(self._r),
            sq_full_submits=int(c[3]),
            bytes_sent=int(c[4]),
        )

    # -- teardown ------------------------------------------------------------

    def close(self) -> None:
        """Cancel what is in flight, wait for it, and tear the ring down.

        Sends queued since the last `wait()` are dropped, not started.

        Teardown in the kernel is asynchronous, so buffers of ops still in
        flight are kept alive (in `_ORPHANS`) if they do not complete within
        a second rather than freed under the kernel.
        """
        if self._closed:
            return
        self._closed = True
        # The pass's sends and watches never reached C: dropped, not started
        # by the drain below after the cancel (they would go out, and a send
        # to a full socket would hold the drain to its timeout).
        self._send_slots, self._send_fds, self._send_data, self._watches = [], [], [], []
        busy = lib.urb_outs_busy
        if self._inflight or busy(self._r):
            try:
                # Not tracked: its own completion is simply not in the table.
                # The owner should have cancelled accepts first: an accept
                # completing during this drain would hand over an fd nobody
                # takes.  The send queues' sends are cancelled too; what
                # is still in flight after the drain keeps its memory (in C).
                _check(lib.urb_prep_cancel_any(self._r, _CLOSE_CANCEL_UD))
                deadline = CLOSE_DRAIN_TIMEOUT_NS
                while (self._inflight or busy(self._r)) and deadline > 0:
                    self.wait(0.05)
                    deadline -= 50_000_000
            except OSError:
                pass
            if self._inflight:
                _ORPHANS.append(self._inflight)
        lib.urb_exit(self._r)

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# References to buffers of ops that never completed before their ring closed.
_ORPHANS: list[dict[int, bytes | None]] = []
