"""Cost of one loop pass's FFI crossings on a `Ring`, measured with NOPs and sends.

A server pass is: queue some SQEs (one foreign call each) and sends (a
Python list append each), then one ``Ring.wait()`` (one foreign call: give
buffers back, copy the sends into the send queues, submit with one
``io_uring_enter``, copy the CQEs out) and build the completion tuples.
NOPs complete during submission, so what the first table measures is the
binding and syscall overhead, not any I/O.  For each batch size it queues
N NOPs and calls ``wait()``, many times after a warm-up, and reports per
batch:

- µs per wait()      time inside ``wait()`` (submit + drain + tuples)
- ns per completion  the same divided by N
- completions per µs N divided by the time of ``wait()``
- enters per batch   ``io_uring_enter`` calls per pass, from ``statistics()``
- µs per pass        prep of N NOPs plus ``wait()``

plus the cost of one ``prep_nop`` call.  The second table queues one 64-byte
``send()`` on each of N slots (N AF_UNIX socketpairs, so every send completes
during the enter and is consumed by the ring unreported) and calls
``wait(0)``: µs per cycle with N sends queued, ns per send, the cost of one
``send()`` call, enters per batch and µs per pass (a quarter of the passes:
each send is a real one); the peers are drained between passes, untimed.
Each number is the best of ``--repeats`` runs (the least disturbed by the
rest of the machine), with the cost of reading the clock subtracted.

Run: ``python -m loadtest.ring_bench`` (a few seconds with the defaults).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_BATCHES = (1, 16, 64, 256)


SEND_BYTES = 64


@dataclass(frozen=True)
class BatchResult:
    batch: int
    wait_ns: float  # per wait() call
    pass_ns: float  # per pass: prep of `batch` NOPs + wait()
    enters_per_batch: float
    sq_full_submits: int


@dataclass(frozen=True)
class SendResult:
    batch: int  # sends queued per pass, one per slot
    cycle_ns: float  # per wait(0) with `batch` sends queued
    send_ns: float  # per send() call
    pass_ns: float  # per pass: `batch` send() calls + wait(0)
    enters_per_batch: float


def clock_overhead_ns(samples: int = 20000) -> float:
    """Cost of one `perf_counter_ns()` pair, subtracted from each timed wait()."""
    clock = time.perf_counter_ns
    best = float("inf")
    for _ in range(3):
        t0 = clock()
        for _ in range(samples):
            clock()
            clock()
        best = min(best, (clock() - t0) / samples)
    return best


def bench_batch(ring, batch: int, iterations: int, warmup: int, overhead: float) -> BatchResult:
    uds = range(batch)
    prep = ring.prep_nop
    wait = ring.wait
    clock = time.perf_counter_ns
    for _ in range(warmup):
        for ud in uds:
            prep(ud)
        if len(wait()[2]) != batch:
            raise RuntimeError("a NOP batch did not complete in one wait()")
    s0 = ring.statistics()
    in_wait = 0
    start = clock()
    for _ in range(iterations):
        for ud in uds:
            prep(ud)
        t0 = clock()
        _, _, done = wait()
        in_wait += clock() - t0
        if len(done) != batch:
            raise RuntimeError(f"wait() returned {len(done)} of {batch} completions")
    total = clock() - start
    s1 = ring.statistics()
    if s1.cqes_reaped - s0.cqes_reaped != batch * iterations:
        raise RuntimeError("completion count mismatch")
    return BatchResult(
        batch=batch,
        wait_ns=max(in_wait / iterations - overhead, 1.0),
        pass_ns=total / iterations,
        enters_per_batch=(s1.io_uring_enter_calls - s0.io_uring_enter_calls) / iterations,
        sq_full_submits=s1.sq_full_submits - s0.sq_full_submits,
    )


def bench_prep(ring, batch: int, iterations: int) -> float:
    """ns per prep_nop() call (the waits that empty the SQ are not timed)."""
    uds = range(batch)
    prep = ring.prep_nop
    clock = time.perf_counter_ns
    spent = 0
    for _ in range(iterations):
        t0 = clock()
        for ud in uds:
            prep(ud)
        spent += clock() - t0
        ring.wait()
    return spent / (iterations * batch)


def bench_sends(
    ring, pairs, batch: int, iterations: int, warmup: int, overhead: float
) -> SendResult:
    """`batch` send()s of SEND_BYTES, one per slot and socket, then wait(0); peers drained."""
    fds = [ours.fileno() for ours, _ in pairs[:batch]]
    recvs = [peer.recv for _, peer in pairs[:batch]]
    slots = range(batch)
    payload = b"s" * SEND_BYTES
    send = ring.send
    wait = ring.wait
    clock = time.perf_counter_ns

    def one_pass() -> tuple[int, int]:
        t0 = clock()
        for slot, fd in zip(slots, fds, strict=True):
            send(slot, fd, payload)
        t1 = clock()
        if wait(0) != ([], [], []):
            raise RuntimeError("the ring reported something for plain sends")
        t2 = clock()
        for recv in recvs:  # each peer holds this pass's bytes, and only those
            if len(recv(4096)) != SEND_BYTES:
                raise RuntimeError("a send did not complete in its own pass")
        return t1 - t0, t2 - t1

    for _ in range(warmup):
        one_pass()
    s0 = ring.statistics()
    in_send = in_wait = 0
    start = clock()
    for _ in range(iterations):
        a, b = one_pass()
        in_send += a
        in_wait += b
    total = clock() - start
    s1 = ring.statistics()
    if s1.bytes_sent - s0.bytes_sent != batch * iterations * SEND_BYTES:
        raise RuntimeError("bytes_sent mismatch")
    if s1.cqes_reaped - s0.cqes_reaped != batch * iterations:
        raise RuntimeError("completion count mismatch: a send was short or resumed")
    return SendResult(
        batch=batch,
        cycle_ns=max(in_wait / iterations - overhead, 1.0),
        send_ns=max((in_send / iterations - overhead) / batch, 1.0),
        pass_ns=total / iterations,  # includes the untimed drain of the peers
        enters_per_batch=(s1.io_uring_enter_calls - s0.io_uring_enter_calls) / iterations,
    )


def socketpairs(count: int) -> list[tuple[socket.socket, socket.socket]]:
    pairs = []
    for _ in range(count):
        ours, peer = socket.socketpair()
        peer.setblocking(False)
        pairs.append((ours, peer))
    return pairs


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.ring_bench", description=__doc__.split("\n")[0]
    )
    p.add_argument("--iterations", type=int, default=2000, help="timed passes per batch size")
    p.add_argument("--warmup", type=int, default=200, help="untimed passes first")
    p.add_argument("--repeats", type=int, default=3, help="runs per batch size; best is shown")
    p.add_argument(
        "--batches",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        default=DEFAULT_BATCHES,
        help="comma-separated NOPs per pass, each <= 256 (default 1,16,64,256)",
    )
    args = p.parse_args(argv)
    if any(not 1 <= b <= 256 for b in args.batches):
        p.error("batch sizes must be between 1 and 256 (the SQ size)")
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if 2 * max(args.batches) + 64 > soft:
        p.error(f"RLIMIT_NOFILE {soft} is too low for {max(args.batches)} socketpairs")
    if min(args.iterations, args.repeats) < 1 or args.warmup < 0:
        p.error("--iterations and --repeats must be >= 1, --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from uring_backend import UringUnavailable
        from uring_backend.testing import TestingRing as Ring
    except ImportError as exc:
        print(f"ring_bench: the uring extension is not built: {exc}", file=sys.stderr)
        return 2
    try:
        # SQ 256 holds the largest batch, so every pass is exactly one enter;
        # CQ 2048 holds every completion of a pass; a send slot per socketpair.
        ring = Ring(256, cq_factor=8, buffers=8, buffer_size=64, send_slots=256)
    except UringUnavailable as exc:
        print(f"ring_bench: {exc}", file=sys.stderr)
        return 2

    overhead = clock_overhead_ns()
    print(f"kernel {platform.release()}, Python {platform.python_version()}, pid {os.getpid()}")
    print(
        f"ring: taskrun={ring.taskrun} setup_flags={ring.setup_flags:#x} "
        f"SQ={ring.sq_entries} CQ={ring.cq_entries}"
    )
    print(
        f"{args.iterations} timed passes per batch after {args.warmup} warm-up, "
        f"best of {args.repeats}; clock pair {overhead:.0f} ns subtracted"
    )
    pairs = socketpairs(max(args.batches))
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with ring:
            prep_ns = min(
                bench_prep(ring, 256, max(1, args.iterations // 4)) for _ in range(args.repeats)
            )
            results = []
            for batch in args.batches:
                runs = [
                    bench_batch(ring, batch, args.iterations, args.warmup, overhead)
                    for _ in range(args.repeats)
                ]
                results.append(min(runs, key=lambda r: r.wait_ns))
            send_results = []
            for batch in args.batches:
                send_runs = [  # a quarter of the passes: each send is a real one
                    bench_sends(
                        ring, pairs, batch, max(1, args.iterations // 4), args.warmup // 4, overhead
                    )
                    for _ in range(args.repeats)
                ]
                send_results.append(min(send_runs, key=lambda r: r.cycle_ns))
            stats = ring.statistics()
    finally:
        if gc_was_enabled:
            gc.enable()
        for ours, peer in pairs:
            ours.close()
            peer.close()

    print()
    print(
        f"{'batch':>6} {'µs/wait()':>10} {'ns/completion':>14} {'completions/µs':>15} "
        f"{'enters/batch':>13} {'µs/pass':>9}"
    )
    for r in results:
        print(
            f"{r.batch:>6} {r.wait_ns / 1000:>10.2f} {r.wait_ns / r.batch:>14.0f} "
            f"{r.batch / (r.wait_ns / 1000):>15.2f} {r.enters_per_batch:>13.2f} "
            f"{r.pass_ns / 1000:>9.2f}"
        )
    print()
    print(f"prep_nop(): {prep_ns:.0f} ns per call (Python method + one cffi call, no syscall)")
    print()
    print(
        f"send() of {SEND_BYTES} B on N slots (N socketpairs), then wait(0); "
        f"{max(1, args.iterations // 4)} timed passes:"
    )
    print(
        f"{'sends':>6} {'µs/cycle':>10} {'ns/send':>8} {'ns/send()':>10} "
        f"{'enters/batch':>13} {'µs/pass':>9}"
    )
    for r in send_results:
        print(
            f"{r.batch:>6} {r.cycle_ns / 1000:>10.2f} {r.cycle_ns / r.batch:>8.0f} "
            f"{r.send_ns:>10.0f} {r.enters_per_batch:>13.2f} {r.pass_ns / 1000:>9.2f}"
        )
    print("(µs/pass includes draining the N peers, one recv each, untimed in µs/cycle)")
    print()
    print(
        f"totals: {stats.io_uring_enter_calls} enters, {stats.sqes_submitted} SQEs, "
        f"{stats.cqes_reaped} CQEs, {stats.sq_full_submits} forced submits (SQ full), "
        f"{stats.bytes_sent} bytes sent"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
