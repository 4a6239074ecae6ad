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
int urb_prep_close(urb_ring *r, int fd, uint64_t ud);
int urb_prep_shutdown(urb_ring *r, int fd, int how, uint64_t ud);
int urb_prep_cancel(urb_ring *r, uint64_t target, uint64_t ud);
int urb_prep_cancel_fd(urb_ring *r, int fd, uint64_t ud);
int urb_prep_cancel_any(urb_ring *r, uint64_t ud);
int urb_prep_timeout(urb_ring *r, int64_t timeout_ns, uint64_t ud);
int urb_prep_poll_multishot(urb_ring *r, int fd, unsigned events, uint64_t ud);
int urb_prep_poll(urb_ring *r, int fd, unsigned events, uint64_t ud);

#define URB_OWN_OPS ...
#define URB_SEND_OP ...
#define URB_IDLE ...
#define URB_PAUSE ...
#define URB_RESUME ...
#define URB_SEND_ERROR ...

int urb_outs_init(urb_ring *r, unsigned slots, unsigned high, unsigned low);
int urb_out_drop(urb_ring *r, unsigned slot);
void urb_out_reset(urb_ring *r, unsigned slot);
unsigned urb_outs_busy(urb_ring *r);
int urb_out_inflight(urb_ring *r, unsigned slot);
int urb_cycle(urb_ring *r, const char *blob, const uint32_t *lens,
              const uint32_t *slots, const int32_t *fds, unsigned nsend,
              const uint32_t *watch, unsigned nwatch, int64_t timeout_ns,
              uint64_t *data_ud, uint16_t *data_bid, int32_t *data_len,
              uint64_t *ud, int32_t *res, uint32_t *flags, unsigned max,
              unsigned *counts);
void urb_counters(urb_ring *r, uint64_t *out);
"""

SOURCE = r"""
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <liburing.h>

typedef struct urb_ring urb_ring;

/* One slot's send queue: `cur` is what the send in flight reads (immutable
 * until its completion), `next` collects what arrives meanwhile. */
struct urb_out {
    char *cur, *next;
    uint32_t cur_off, cur_len, next_len, next_cap;
    int32_t fd;
    uint8_t inflight, paused, watch, dropped;
};

#define URB_OWN_OPS 0xF0ULL  /* user_data top bytes from here up are the ring's */
#define URB_SEND_OP 0xF0ULL  /* a queue's send: URB_SEND_OP << 56 | slot */
#define URB_IDLE 0xF1ULL     /* reports: kind << 56 | slot */
#define URB_PAUSE 0xF2ULL
#define URB_RESUME 0xF3ULL
#define URB_SEND_ERROR 0xF4ULL

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
    uint64_t enters, sqes, cqes, sq_full_submits, bytes_sent;
    /* send queues, one per slot (see "Send queues" below) */
    struct urb_out *outs;
    unsigned nouts, high, low, busy;
    /* buffer ids of the last batch: Python copies their bytes out before the
     * next cycle, which gives them back to the kernel */
    uint16_t *spent;
    unsigned nspent;
    /* reports waiting to be handed to Python (ud, res) */
    uint64_t *rep_ud;
    int32_t *rep_res;
    unsigned nrep, rep_cap;
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
    if (r->outs) {
        unsigned i;
        /* The kernel tears a ring down asynchronously: a send still in flight
         * may read its bytes after io_uring_queue_exit() returns, so they
         * are left allocated (ring.py keeps Python buffers alive the same way). */
        for (i = 0; i < r->nouts; i++) {
            if (!r->outs[i].inflight)
                free(r->outs[i].cur);
            free(r->outs[i].next);
        }
    }
    free(r->outs);
    r->outs = NULL;
    r->nouts = 0; /* every slot is out of range now: no call reaches the freed queues */
    free(r->spent);
    r->spent = NULL;
    free(r->rep_ud);
    free(r->rep_res);
    r->rep_ud = NULL;
    r->rep_res = NULL;
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
/* One completion, as soon as the fd is ready for `events` (at once if it
 * already is): re-armed after each, it reads as level-triggered readiness. */
URB_PREP(poll, (int fd, unsigned events,), io_uring_prep_poll_add(sqe, fd, events))

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
 * Send queues.  A send copies the caller's bytes into memory the ring owns,
 * so nothing the caller holds has to outlive the call, and the ring finishes
 * the send itself: a short send resumes at its offset, bytes queued while a
 * send is in flight follow in one send once it completes (one send in flight
 * per slot keeps a stream's bytes in order), and a successful completion is
 * consumed here, never reported.  What the caller hears of a queue:
 *   URB_PAUSE   its unsent bytes went above `high` (stop reading that peer);
 *   URB_RESUME  after a PAUSE, they drained to `low` or below;
 *   URB_IDLE    nothing queued and nothing in flight, once it was asked for
 *               (a watch) and only once per watch;
 *   URB_SEND_ERROR  a send failed (res = -errno); the queue is dropped.
 * A slot belongs to one connection from its first send to urb_out_reset();
 * the caller resets it only once it is idle, so a late completion cannot
 * reach the slot's next owner.
 */
int urb_outs_init(urb_ring *r, unsigned slots, unsigned high, unsigned low)
{
    r->outs = calloc(slots, sizeof(*r->outs));
    /* a cycle hands out at most `max` data and `max` other completions */
    r->spent = calloc(2 * (size_t)r->ring.cq.ring_entries, sizeof(*r->spent));
    r->rep_cap = 64;
    r->rep_ud = malloc(r->rep_cap * sizeof(*r->rep_ud));
    r->rep_res = malloc(r->rep_cap * sizeof(*r->rep_res));
    if (!r->outs || !r->spent || !r->rep_ud || !r->rep_res)
        return -ENOMEM;
    r->nouts = slots;
    r->high = high;
    r->low = low;
    return 0;
}

static void urb_report(urb_ring *r, uint64_t kind, unsigned slot, int32_t res)
{
    if (r->nrep == r->rep_cap) {
        unsigned cap = r->rep_cap * 2;
        uint64_t *u = realloc(r->rep_ud, cap * sizeof(*u));
        int32_t *v;
        if (!u)
            abort(); /* a report lost would leave a connection open forever */
        r->rep_ud = u;
        v = realloc(r->rep_res, cap * sizeof(*v));
        if (!v)
            abort();
        r->rep_res = v;
        r->rep_cap = cap;
    }
    r->rep_ud[r->nrep] = kind << 56 | slot;
    r->rep_res[r->nrep] = res;
    r->nrep++;
}

static uint32_t urb_out_unsent(const struct urb_out *o)
{
    return o->cur_len - o->cur_off + o->next_len;
}

/* Queue a send of cur[cur_off:]; an SQ that cannot take it after a forced
 * submit is reported as a failed send. */
static void urb_out_start(urb_ring *r, unsigned slot)
{
    struct urb_out *o = &r->outs[slot];
    struct io_uring_sqe *sqe = NULL;
    int ret = urb_sqe(r, &sqe);

    if (ret < 0) {
        urb_report(r, URB_SEND_ERROR, slot, ret);
        return;
    }
    /* MSG_NOSIGNAL: a reset peer gives EPIPE, not SIGPIPE. */
    io_uring_prep_send(sqe, o->fd, o->cur + o->cur_off, o->cur_len - o->cur_off,
                       MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, URB_SEND_OP << 56 | slot);
    o->inflight = 1;
    r->busy++;
}

static void urb_out_free(struct urb_out *o)
{
    free(o->next);
    o->next = NULL;
    o->next_len = o->next_cap = 0;
    if (!o->inflight) {
        free(o->cur);
        o->cur = NULL;
        o->cur_len = o->cur_off = 0;
    }
}

static void urb_out_idle(urb_ring *r, unsigned slot)
{
    struct urb_out *o = &r->outs[slot];
    if (o->watch && !o->inflight && !o->next_len) {
        o->watch = 0;
        urb_report(r, URB_IDLE, slot, 0);
    }
}

/* `next` takes the bytes; if nothing is in flight it becomes `cur` and goes. */
static int urb_out_push(urb_ring *r, unsigned slot, int32_t fd, const char *p, uint32_t n)
{
    struct urb_out *o;

    if (slot >= r->nouts)
        return -EINVAL;
    o = &r->outs[slot];
    if (o->dropped || n == 0)
        return 0;
    o->fd = fd;
    if (o->next_len + n > o->next_cap) {
        uint32_t cap = o->next_len + n;
        char *q;
        if (cap < 2 * o->next_cap)
            cap = 2 * o->next_cap;
        q = realloc(o->next, cap);
        if (!q)
            return -ENOMEM;
        o->next = q;
        o->next_cap = cap;
    }
    memcpy(o->next + o->next_len, p, n);
    o->next_len += n;
    if (!o->inflight) {
        free(o->cur);
        o->cur = o->next;
        o->cur_len = o->next_len;
        o->cur_off = 0;
        o->next = NULL;
        o->next_len = o->next_cap = 0;
        urb_out_start(r, slot);
    }
    if (!o->paused && urb_out_unsent(o) > r->high) {
        o->paused = 1;
        urb_report(r, URB_PAUSE, slot, 0);
    }
    return 0;
}

/* A send of the queue completed (or failed, or was cancelled). */
static void urb_out_done(urb_ring *r, unsigned slot, int32_t res)
{
    struct urb_out *o = &r->outs[slot];

    o->inflight = 0;
    r->busy--;
    if (res < 0) {
        if (!o->dropped && res != -ECANCELED)
            urb_report(r, URB_SEND_ERROR, slot, res);
        o->dropped = 1;
        urb_out_free(o);
        urb_out_idle(r, slot);
        return;
    }
    r->bytes_sent += (uint32_t)res;
    o->cur_off += (uint32_t)res;
    if (o->dropped) {
        urb_out_free(o);
    } else if (o->cur_off < o->cur_len) {
        urb_out_start(r, slot); /* a short send: the rest of the same bytes */
    } else {
        free(o->cur);
        o->cur = NULL;
        o->cur_len = o->cur_off = 0;
        if (o->next_len) {
            o->cur = o->next;
            o->cur_len = o->next_len;
            o->next = NULL;
            o->next_len = o->next_cap = 0;
            urb_out_start(r, slot);
        }
    }
    /* After every completion, a short one included: the rest of a send can
     * be in flight, waiting for room, with unsent already at the low mark. */
    if (o->paused && urb_out_unsent(o) <= r->low) {
        o->paused = 0;
        urb_report(r, URB_RESUME, slot, 0);
    }
    urb_out_idle(r, slot);
}

/* Stop a slot's queue (an abort): what is not in flight is freed, later
 * sends are ignored.  Returns 1 if a send is still in flight (URB_IDLE
 * follows its completion; the caller cancels it), else 0. */
int urb_out_drop(urb_ring *r, unsigned slot)
{
    struct urb_out *o;
    if (!r->outs)
        return -EBADF; /* torn down, as the preps report it */
    if (slot >= r->nouts)
        return -EINVAL;
    o = &r->outs[slot];
    o->dropped = 1;
    urb_out_free(o);
    if (!o->inflight)
        return 0;
    o->watch = 1;
    return 1;
}

/* Make an idle slot new for its next owner. */
void urb_out_reset(urb_ring *r, unsigned slot)
{
    struct urb_out *o;
    if (slot >= r->nouts || r->outs[slot].inflight)
        return;
    o = &r->outs[slot];
    urb_out_free(o);
    memset(o, 0, sizeof(*o));
}

unsigned urb_outs_busy(urb_ring *r) { return r->busy; }

int urb_out_inflight(urb_ring *r, unsigned slot)
{
    return slot < r->nouts && r->outs[slot].inflight;
}

static int64_t urb_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/*
 * The loop's one foreign call per pass:
 * 1. give back the buffers of the previous batch (Python copied their bytes
 *    out during the pass);
 * 2. queue the pass's sends (`nsend` of them, back to back in `blob`) and
 *    apply the watches asked for after them;
 * 3. submit and wait, with one io_uring_enter, for one completion beyond the
 *    sends just queued (those on a socket with room complete inline, during
 *    that enter, and would satisfy the wait at once), for at most
 *    URB_SEND_WAIT_CAP_NS: a send that fails at once, or blocks on a full
 *    socket, must not hold back what else has arrived;
 * 4. drain the CQ once with io_uring_for_each_cqe: the send queues' own
 *    completions are consumed here; completions that carry bytes of a
 *    multishot receive (F_BUFFER and F_MORE) go to data_ud/data_bid/data_len;
 *    every other completion, and the queues' reports, to ud/res/flags;
 * 5. if nothing for the caller arrived and time is left, wait again, for
 *    one completion.
 * counts[0] = data completions, counts[1] = the others.
 * Returns 0, or -errno from the wait when nothing arrived (-ETIME, -EINTR).
 */
#define URB_SEND_WAIT_CAP_NS 1000000LL

int urb_cycle(urb_ring *r, const char *blob, const uint32_t *lens,
              const uint32_t *slots, const int32_t *fds, unsigned nsend,
              const uint32_t *watch, unsigned nwatch, int64_t timeout_ns,
              uint64_t *data_ud, uint16_t *data_bid, int32_t *data_len,
              uint64_t *ud, int32_t *res, uint32_t *flags, unsigned max,
              unsigned *counts)
{
    struct io_uring_cqe *cqe;
    unsigned head, nd = 0, n = 0, i, seen, started;
    int64_t deadline = 0;
    size_t at = 0;
    int ret = 0, mask;

    counts[0] = counts[1] = 0;
    if (!r->initialised || !r->outs)
        return -EBADF;
    mask = io_uring_buf_ring_mask(r->buf_count);
    for (i = 0; i < r->nspent; i++)
        io_uring_buf_ring_add(r->br, r->slab + (size_t)r->spent[i] * r->buf_size,
                              r->buf_size, r->spent[i], mask, i);
    if (r->nspent)
        io_uring_buf_ring_advance(r->br, r->nspent);
    r->nspent = 0;
    started = r->busy;
    for (i = 0; i < nsend; i++) {
        ret = urb_out_push(r, slots[i], fds[i], blob + at, lens[i]);
        if (ret < 0)
            urb_report(r, URB_SEND_ERROR, slots[i], ret);
        at += lens[i];
    }
    started = r->busy > started ? r->busy - started : 0;
    for (i = 0; i < nwatch; i++) {
        if (watch[i] < r->nouts) {
            r->outs[watch[i]].watch = 1;
            urb_out_idle(r, watch[i]);
        }
    }
    if (timeout_ns > 0)
        deadline = urb_now_ns() + timeout_ns;
    for (;;) {
        int64_t wait_ns = timeout_ns;
        if (started && (wait_ns < 0 || wait_ns > URB_SEND_WAIT_CAP_NS))
            wait_ns = URB_SEND_WAIT_CAP_NS;
        ret = urb_submit_wait(r, r->nrep ? 0 : started + 1, r->nrep ? 0 : wait_ns);
        seen = 0;
        io_uring_for_each_cqe(&r->ring, head, cqe) {
            uint64_t u = cqe->user_data;
            if (nd == max || n + r->nrep >= max)
                break;
            seen++;
            if (u >> 56 == URB_SEND_OP) {
                urb_out_done(r, (unsigned)(u & 0xFFFFFFFFu), cqe->res);
                continue;
            }
            if (cqe->flags & IORING_CQE_F_BUFFER) {
                uint16_t bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
                r->spent[r->nspent++] = bid;
                if (cqe->flags & IORING_CQE_F_MORE && cqe->res > 0) {
                    data_ud[nd] = u;
                    data_bid[nd] = bid;
                    data_len[nd] = cqe->res;
                    nd++;
                    continue;
                }
            }
            ud[n] = u;
            res[n] = cqe->res;
            flags[n] = cqe->flags;
            n++;
        }
        io_uring_cq_advance(&r->ring, seen);
        r->cqes += seen;
        /* reports, as many as fit; the rest make the next cycle return at once */
        for (i = 0; i < r->nrep && n < max; i++, n++) {
            ud[n] = r->rep_ud[i];
            res[n] = r->rep_res[i];
            flags[n] = 0;
        }
        if (i) {
            memmove(r->rep_ud, r->rep_ud + i, (r->nrep - i) * sizeof(*r->rep_ud));
            memmove(r->rep_res, r->rep_res + i, (r->nrep - i) * sizeof(*r->rep_res));
            r->nrep -= i;
        }
        if (nd || n || timeout_ns == 0 || (ret < 0 && ret != -ETIME))
            break;
        if (timeout_ns > 0) {
            timeout_ns = deadline - urb_now_ns();
            if (timeout_ns <= 0) {
                ret = -ETIME;
                break;
            }
        }
        started = 0;
    }
    counts[0] = nd;
    counts[1] = n;
    if (nd == 0 && n == 0 && ret < 0)
        return ret;
    return 0;
}

/* enters, sqes submitted, cqes reaped, extra submits forced by a full SQ,
 * bytes the send queues sent */
void urb_counters(urb_ring *r, uint64_t *out)
{
    out[0] = r->enters;
    out[1] = r->sqes;
    out[2] = r->cqes;
    out[3] = r->sq_full_submits;
    out[4] = r->bytes_sent;
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
