"""cffi build script for the liburing binding (out-of-line API mode).

API mode is required: most of liburing's interface is ``static inline`` and
only exists once a C compiler has read ``<liburing.h>`` (liburing README,
"FFI support").  The CDEF below declares only what ``ring.py`` calls.  Every
function is a small shim prefixed ``urb_`` so it never looks like liburing's
own API; each exists because it either wraps a macro or inline function, or
folds several liburing calls into one foreign call so the hot loop crosses the
FFI boundary about once per batch.

Run ``python uring_backend/_build.py`` to compile in place while iterating;
``pip install`` builds it through ``setup.py``'s ``cffi_modules``.
"""

from __future__ import annotations

from cffi import FFI

CDEF = """
typedef struct urb_ring urb_ring;

#define IORING_SETUP_SQPOLL ...
#define IORING_SETUP_CQSIZE ...
#define IORING_SETUP_SUBMIT_ALL ...
#define IORING_SETUP_COOP_TASKRUN ...
#define IORING_SETUP_SINGLE_ISSUER ...
#define IORING_SETUP_DEFER_TASKRUN ...
#define IORING_CQE_F_BUFFER ...
#define IORING_CQE_F_MORE ...
#define IORING_CQE_BUFFER_SHIFT ...
#define IORING_FEAT_NODROP ...

urb_ring *urb_new(void);
void urb_free(urb_ring *r);
int urb_init(urb_ring *r, unsigned entries, unsigned cq_entries,
             unsigned flags, unsigned sq_thread_idle_ms);
unsigned urb_flags(urb_ring *r);
unsigned urb_features(urb_ring *r);
unsigned urb_sq_entries(urb_ring *r);
unsigned urb_cq_entries(urb_ring *r);
int urb_setup_bufs(urb_ring *r, unsigned count, unsigned size, unsigned bgid);
char *urb_slab(urb_ring *r);
void urb_exit(urb_ring *r);

int urb_prep_nop(urb_ring *r, uint64_t ud);  /* uring_backend.testing only */
int urb_prep_accept_multishot(urb_ring *r, int fd, uint64_t ud);
int urb_prep_recv_multishot(urb_ring *r, int fd, uint64_t ud);
int urb_prep_send(urb_ring *r, int fd, const char *buf, unsigned off,
                  unsigned len, uint64_t ud);
int urb_prep_close(urb_ring *r, int fd, uint64_t ud);
int urb_prep_shutdown(urb_ring *r, int fd, int how, uint64_t ud);
int urb_prep_cancel(urb_ring *r, uint64_t target, uint64_t ud);
int urb_prep_cancel_fd(urb_ring *r, int fd, uint64_t ud);
int urb_prep_cancel_any(urb_ring *r, uint64_t ud);
int urb_prep_timeout(urb_ring *r, int64_t timeout_ns, uint64_t ud);
int urb_prep_poll_multishot(urb_ring *r, int fd, unsigned events, uint64_t ud);

int urb_cycle(urb_ring *r, const uint16_t *bids, unsigned nbids,
              unsigned wait_nr, int64_t timeout_ns,
              uint64_t *ud, int32_t *res, uint32_t *flags, unsigned max);
void urb_counters(urb_ring *r, uint64_t *out);
"""

SOURCE = r"""
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <liburing.h>

typedef struct urb_ring urb_ring;

/*
 * Everything the binding keeps per ring lives in one C struct, allocated once,
 * so no call in the hot loop allocates cdata.  `ts` holds one timespec per SQ
 * slot: IORING_OP_TIMEOUT reads its timespec at submission, so the timespec of
 * an SQE must survive until that SQE is submitted, and indexing by SQE slot
 * gives each queued timeout its own.
 */
struct urb_ring {
    struct io_uring ring;
    struct io_uring_buf_ring *br;
    size_t br_bytes;
    char *slab;
    size_t slab_bytes;
    unsigned buf_count, buf_size, bgid;
    int initialised;
    struct __kernel_timespec *ts;
    struct __kernel_timespec wait_ts;
    uint64_t enters, sqes, cqes, sq_full_submits;
};

urb_ring *urb_new(void) { return calloc(1, sizeof(urb_ring)); }

unsigned urb_flags(urb_ring *r) { return r->ring.flags; }
unsigned urb_features(urb_ring *r) { return r->ring.features; }
unsigned urb_sq_entries(urb_ring *r) { return r->ring.sq.ring_entries; }
unsigned urb_cq_entries(urb_ring *r) { return r->ring.cq.ring_entries; }
char *urb_slab(urb_ring *r) { return r->slab; }

int urb_init(urb_ring *r, unsigned entries, unsigned cq_entries,
             unsigned flags, unsigned sq_thread_idle_ms)
{
    struct io_uring_params p;
    int ret;

    memset(&p, 0, sizeof(p));
    p.flags = flags;
    p.cq_entries = cq_entries;
    p.sq_thread_idle = sq_thread_idle_ms;
    ret = io_uring_queue_init_params(entries, &r->ring, &p);
    if (ret < 0)
        return ret;
    r->ts = calloc(r->ring.sq.ring_entries, sizeof(*r->ts));
    if (!r->ts) {
        io_uring_queue_exit(&r->ring);
        return -ENOMEM;
    }
    r->initialised = 1;
    /* Registering the ring fd saves an fdget/fdput on every enter (5.18+);
     * it is an optimisation only, so a refusal is not an error. */
    (void)io_uring_register_ring_fd(&r->ring);
    return 0;
}

/*
 * liburing 2.3 has no io_uring_setup_buf_ring(): the ring of provided buffers
 * is page-aligned memory we map ourselves and register with
 * io_uring_register_buf_ring(); the buffers are one slab so Python can copy
 * a completion's bytes out with a single slice of one ffi.buffer.
 */
int urb_setup_bufs(urb_ring *r, unsigned count, unsigned size, unsigned bgid)
{
    struct io_uring_buf_reg reg;
    void *mem;
    unsigned i;
    int ret, mask = io_uring_buf_ring_mask(count);

    r->br_bytes = count * sizeof(struct io_uring_buf);
    mem = mmap(NULL, r->br_bytes, PROT_READ | PROT_WRITE,
               MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (mem == MAP_FAILED)
        return -errno;
    r->slab_bytes = (size_t)count * size;
    r->slab = mmap(NULL, r->slab_bytes, PROT_READ | PROT_WRITE,
                   MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (r->slab == MAP_FAILED) {
        ret = -errno;
        munmap(mem, r->br_bytes);
        r->slab = NULL;
        return ret;
    }
    r->br = mem;
    io_uring_buf_ring_init(r->br);
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (unsigned long)(uintptr_t)mem;
    reg.ring_entries = count;
    reg.bgid = bgid;
    ret = io_uring_register_buf_ring(&r->ring, &reg, 0);
    if (ret < 0) {
        munmap(r->slab, r->slab_bytes);
        munmap(mem, r->br_bytes);
        r->slab = NULL;
        r->br = NULL;
        return ret;
    }
    for (i = 0; i < count; i++)
        io_uring_buf_ring_add(r->br, r->slab + (size_t)i * size, size, i,
                              mask, i);
    io_uring_buf_ring_advance(r->br, count);
    r->buf_count = count;
    r->buf_size = size;
    r->bgid = bgid;
    return 0;
}

void urb_exit(urb_ring *r)
{
    if (r->initialised) {
        if (r->br)
            io_uring_unregister_buf_ring(&r->ring, r->bgid);
        io_uring_queue_exit(&r->ring);
        r->initialised = 0;
    }
    if (r->br)
        munmap(r->br, r->br_bytes);
    if (r->slab)
        munmap(r->slab, r->slab_bytes);
    r->br = NULL;
    r->slab = NULL;
    free(r->ts);
    r->ts = NULL;
}

void urb_free(urb_ring *r)
{
    if (r) {
        urb_exit(r);
        free(r);
    }
}

/*
 * io_uring_get_sqe() returns NULL when the SQ is full.  Submitting what is
 * queued frees the slots; that costs one extra enter, counted, and only
 * happens when a pass queues more than the SQ holds.  Every prep returns
 * -EBADF on a ring that was torn down (its SQ is unmapped by then), and the
 * errno of a failed forced submit otherwise.
 */
static int urb_sqe(urb_ring *r, struct io_uring_sqe **out)
{
    struct io_uring_sqe *sqe;
    unsigned pending;
    int ret;

    if (!r->initialised)
        return -EBADF;
    sqe = io_uring_get_sqe(&r->ring);
    if (!sqe) {
        pending = io_uring_sq_ready(&r->ring);
        ret = io_uring_submit(&r->ring);
        r->enters++;
        if (ret < 0)
            return ret;
        r->sq_full_submits++;
        r->sqes += pending - io_uring_sq_ready(&r->ring);
        sqe = io_uring_get_sqe(&r->ring);
        if (!sqe)
            return -EBUSY;
    }
    *out = sqe;
    return 0;
}

/*
 * Every prep shim has one shape: take an SQE (submitting a full SQ first),
 * fill it with one liburing io_uring_prep_* call, tag it with `ud`, return 0
 * or -errno.  URB_PREP writes that shape once; each line below names the
 * shim, its parameters after the ring and before `ud`, and the prep call.
 */
#define URB_PREP(name, params, ...)                  \
    int urb_prep_##name(urb_ring *r, URB_UNPAREN params uint64_t ud) \
    {                                                \
        struct io_uring_sqe *sqe = NULL;             \
        int ret = urb_sqe(r, &sqe);                  \
        if (ret < 0)                                 \
            return ret;                              \
        __VA_ARGS__;                                 \
        io_uring_sqe_set_data64(sqe, ud);            \
        return 0;                                    \
    }
#define URB_UNPAREN(...) __VA_ARGS__

URB_PREP(nop, (), io_uring_prep_nop(sqe))
URB_PREP(accept_multishot, (int fd,),
         io_uring_prep_multishot_accept(sqe, fd, NULL, NULL,
                                        SOCK_NONBLOCK | SOCK_CLOEXEC))
/* Multishot recv with buffer selection: no buffer is tied to the socket
 * until data arrives, so an idle connection holds no receive memory. */
URB_PREP(recv_multishot, (int fd,),
         io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
         sqe->flags |= IOSQE_BUFFER_SELECT;
         sqe->buf_group = r->bgid)
/* `buf` points into a Python bytes object that ring.py keeps referenced
 * until this send's completion; `off` lets a short send resume without
 * copying the tail. MSG_NOSIGNAL: a reset peer gives EPIPE, not SIGPIPE. */
URB_PREP(send, (int fd, const char *buf, unsigned off, unsigned len,),
         io_uring_prep_send(sqe, fd, buf + off, len, MSG_NOSIGNAL))
URB_PREP(close, (int fd,), io_uring_prep_close(sqe, fd))
URB_PREP(shutdown, (int fd, int how,), io_uring_prep_shutdown(sqe, fd, how))
URB_PREP(cancel, (uint64_t target,), io_uring_prep_cancel64(sqe, target, 0))
URB_PREP(cancel_fd, (int fd,),
         io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL))
URB_PREP(cancel_any, (),
         io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL))
/* IORING_OP_TIMEOUT reads its timespec at submission: each SQ slot has its
 * own (see struct urb_ring). */
URB_PREP(timeout, (int64_t timeout_ns,),
         struct __kernel_timespec *ts = &r->ts[sqe - r->ring.sq.sqes];
         ts->tv_sec = timeout_ns / 1000000000LL;
         ts->tv_nsec = timeout_ns % 1000000000LL;
         io_uring_prep_timeout(sqe, ts, 0, 0))
URB_PREP(poll_multishot, (int fd, unsigned events,),
         io_uring_prep_poll_multishot(sqe, fd, events))

/*
 * Submit what is queued and wait, with exactly one io_uring_enter:
 * - completions already in the CQ and nothing to submit: no syscall at all;
 * - completions ready, or a zero wait: submit and run deferred task work
 *   (IORING_ENTER_GETEVENTS without waiting; with DEFER_TASKRUN the kernel
 *   posts completions only when we ask for events);
 * - otherwise: submit and wait for `wait_nr` completions or the timeout.
 * A CQ that overflowed (IORING_FEAT_NODROP keeps the extra CQEs in the
 * kernel) is flushed by any GETEVENTS enter, which the next pass makes as
 * soon as the CQ has been drained.
 * Returns 0, or -errno (-ETIME on timeout and -EINTR on a signal are normal).
 */
static int urb_submit_wait(urb_ring *r, unsigned wait_nr, int64_t timeout_ns)
{
    struct io_uring *ring = &r->ring;
    struct io_uring_cqe *cqe;
    unsigned pending = io_uring_sq_ready(ring);
    unsigned ready = io_uring_cq_ready(ring);
    int ret;

    if (ready && !pending)
        return 0;
    if (ready || wait_nr == 0 || timeout_ns == 0) {
        ret = io_uring_submit_and_get_events(ring);
    } else if (timeout_ns < 0) {
        ret = io_uring_submit_and_wait(ring, wait_nr);
    } else {
        r->wait_ts.tv_sec = timeout_ns / 1000000000LL;
        r->wait_ts.tv_nsec = timeout_ns % 1000000000LL;
        ret = io_uring_submit_and_wait_timeout(ring, &cqe, wait_nr,
                                               &r->wait_ts, NULL);
    }
    r->enters++;
    r->sqes += pending - io_uring_sq_ready(ring);
    return ret < 0 ? ret : 0;
}

/*
 * The loop's one foreign call per pass: give back the buffer ids whose bytes
 * Python copied out during the previous pass, submit and wait, then copy up
 * to `max` CQEs into the caller's preallocated arrays with liburing's
 * io_uring_for_each_cqe macro and advance the CQ once for the whole batch.
 * Returns the number of completions copied, or -errno from the wait when
 * there are none (-ETIME and -EINTR included).
 */
int urb_cycle(urb_ring *r, const uint16_t *bids, unsigned nbids,
              unsigned wait_nr, int64_t timeout_ns,
              uint64_t *ud, int32_t *res, uint32_t *flags, unsigned max)
{
    struct io_uring_cqe *cqe;
    unsigned head, n = 0, i;
    int ret;

    if (!r->initialised)
        return -EBADF;
    if (nbids && r->br) {
        int mask = io_uring_buf_ring_mask(r->buf_count);
        for (i = 0; i < nbids; i++)
            io_uring_buf_ring_add(r->br, r->slab + (size_t)bids[i] * r->buf_size,
                                  r->buf_size, bids[i], mask, i);
        io_uring_buf_ring_advance(r->br, nbids);
    }
    ret = urb_submit_wait(r, wait_nr, timeout_ns);
    io_uring_for_each_cqe(&r->ring, head, cqe) {
        if (n == max)
            break;
        ud[n] = cqe->user_data;
        res[n] = cqe->res;
        flags[n] = cqe->flags;
        n++;
    }
    io_uring_cq_advance(&r->ring, n);
    r->cqes += n;
    if (n == 0 && ret < 0)
        return ret;
    return (int)n;
}

/* enters, sqes submitted, cqes reaped, extra submits forced by a full SQ */
void urb_counters(urb_ring *r, uint64_t *out)
{
    out[0] = r->enters;
    out[1] = r->sqes;
    out[2] = r->cqes;
    out[3] = r->sq_full_submits;
}
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "uring_backend._liburing",
    SOURCE,
    libraries=["uring"],
    extra_compile_args=["-O2", "-Wall"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
