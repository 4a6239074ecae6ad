"""Cost of one loop pass's FFI crossings on a `Ring`, measured with NOPs.

A server pass queues some SQEs (one foreign call each), then makes one
``Ring.wait()`` (give buffers back, submit with one ``io_uring_enter``, copy
the CQEs out).  NOPs complete during submission, so this measures the
binding and syscall overhead, not I/O: for each batch size, µs per wait(),
ns per completion, completions per µs, enters per batch and µs per pass
(prep plus wait), plus the cost of one ``prep_nop``.  Each is the best of
``--repeats`` runs (the least disturbed), the clock's own cost subtracted.

Run: ``python -m loadtest.ring_bench`` (about 2 s with the defaults).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_BATCHES = (1, 16, 64, 256)


@dataclass(frozen=True)
class BatchResult:
    batch: int
    wait_ns: float  # per wait() call
    pass_ns: float  # per pass: prep of `batch` NOPs + wait()
    enters_per_batch: float


def clock_overhead_ns(samples: int = 20000) -> float:
    """Cost of one `perf_counter_ns()` pair, subtracted from each timed wait()."""
    clock, best = time.perf_counter_ns, float("inf")
    for _ in range(3):
        t0 = clock()
        for _ in range(samples):
            clock()
            clock()
        best = min(best, (clock() - t0) / samples)
    return best


def bench_batch(ring, batch: int, iterations: int, warmup: int, overhead: float) -> BatchResult:
    uds, prep, wait, clock = range(batch), ring.prep_nop, ring.wait, time.perf_counter_ns
    for _ in range(warmup):
        for ud in uds:
            prep(ud)
        if len(wait()) != batch:
            raise RuntimeError("a NOP batch did not complete in one wait()")
    s0 = ring.statistics()
    in_wait = 0
    start = clock()
    for _ in range(iterations):
        for ud in uds:
            prep(ud)
        t0 = clock()
        done = wait()
        in_wait += clock() - t0
        if len(done) != batch:
            raise RuntimeError(f"wait() returned {len(done)} of {batch} completions")
    total = clock() - start
    s1 = ring.statistics()
    if s1.cqes_reaped - s0.cqes_reaped != batch * iterations:
        raise RuntimeError("completion count mismatch")
    enters = (s1.io_uring_enter_calls - s0.io_uring_enter_calls) / iterations
    return BatchResult(batch, max(in_wait / iterations - overhead, 1.0), total / iterations, enters)


def bench_prep(ring, batch: int, iterations: int) -> float:
    """ns per prep_nop() call (the waits that empty the SQ are not timed)."""
    uds, prep, clock, spent = range(batch), ring.prep_nop, time.perf_counter_ns, 0
    for _ in range(iterations):
        t0 = clock()
        for ud in uds:
            prep(ud)
        spent += clock() - t0
        ring.wait()
    return spent / (iterations * batch)


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
        # CQ 2048 holds every completion of a pass.
        ring = Ring(256, cq_factor=8, buffers=8, buffer_size=64)
    except UringUnavailable as exc:
        print(f"ring_bench: {exc}", file=sys.stderr)
        return 2

    overhead = clock_overhead_ns()
    print(f"kernel {platform.release()}, Python {platform.python_version()}, pid {os.getpid()}\n"
          f"ring: taskrun={ring.taskrun} setup_flags={ring.setup_flags:#x} "
          f"SQ={ring.sq_entries} CQ={ring.cq_entries}\n{args.iterations} timed passes per batch "
          f"after {args.warmup} warm-up, best of {args.repeats}; clock pair {overhead:.0f} ns "
          "subtracted")  # fmt: skip
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
            stats = ring.statistics()
    finally:
        if gc_was_enabled:
            gc.enable()

    # fmt: off
    print(f"\n{'batch':>6} {'µs/wait()':>10} {'ns/completion':>14} {'completions/µs':>15} "
          f"{'enters/batch':>13} {'µs/pass':>9}")
    for r in results:
        print(f"{r.batch:>6} {r.wait_ns / 1000:>10.2f} {r.wait_ns / r.batch:>14.0f} "
              f"{r.batch / (r.wait_ns / 1000):>15.2f} {r.enters_per_batch:>13.2f} "
              f"{r.pass_ns / 1000:>9.2f}")
    print(f"\nprep_nop(): {prep_ns:.0f} ns per call (Python method + one cffi call, no syscall)\n"
          f"totals: {stats.io_uring_enter_calls} enters, {stats.sqes_submitted} SQEs, "
          f"{stats.cqes_reaped} CQEs, {stats.sq_full_submits} forced submits (SQ full)")
    # fmt: on
    return 0


if __name__ == "__main__":
    sys.exit(main())
