/*
 * A minimal liburing echo server: the native reference for the echo
 * benchmark, built at benchmark time (cc -O2 uring_echo.c -luring).
 *
 * Same design as ringserve's uring backend, without Python: one multishot
 * accept; one multishot recv per connection into a provided-buffer ring; each
 * received buffer is sent back as is and returned to the ring when its send
 * completes; SINGLE_ISSUER | DEFER_TASKRUN; one io_uring_submit_and_wait per
 * batch and one CQ advance per batch (liburing's examples/echo-server.c has
 * the same shape).  Minimal on purpose: a short send is resumed from its
 * buffer, but sends on one connection are not ordered against each other,
 * which a ping-pong client (one message in flight per connection) never
 * notices.
 *
 * Two options measure what io_uring features would give the Python server
 * (issue 6), on this server where nothing else costs:
 *   --fixed-files  accept straight into a sparse registered-file table
 *                  (multishot accept direct), recv and send with
 *                  IOSQE_FIXED_FILE, close with close_direct: no fget/fput per op;
 *   --send-zc      IORING_OP_SEND_ZC: a buffer goes back to the ring only after
 *                  its notification CQE (IORING_CQE_F_NOTIF).
 *
 * Usage: uring_echo PORT [--fixed-files] [--send-zc]
 *        (binds 127.0.0.1; SIGTERM/SIGINT exit 0)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef BUF_COUNT
#define BUF_COUNT 4096 /* -DBUF_COUNT=... -DBUF_SIZE=... for large messages */
#endif
#ifndef BUF_SIZE
#define BUF_SIZE 4096
#endif
#define BGID 1
#define MAX_FILES 16384
enum { OP_ACCEPT = 1, OP_RECV, OP_SEND };

static struct io_uring ring;
static struct io_uring_buf_ring *br;
static char *slab;
static unsigned sent_off[BUF_COUNT], send_len[BUF_COUNT];
static unsigned notifs[BUF_COUNT];  /* send_zc notifications still to come */
static int done[BUF_COUNT];         /* the buffer's sends are over */
static int fixed_files, send_zc;
static volatile sig_atomic_t stop;

/* user_data: op in bits 56..63, buffer id in 32..47, fd in 0..31 */
static inline __u64 encode(int op, int bid, int fd)
{
    return ((__u64)op << 56) | ((__u64)(unsigned)bid << 32) | (unsigned)fd;
}

static struct io_uring_sqe *sqe_get(void)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    if (!sqe) {
        io_uring_submit(&ring);
        sqe = io_uring_get_sqe(&ring);
    }
    return sqe;
}

static void arm_accept(int lfd)
{
    struct io_uring_sqe *sqe = sqe_get();
    if (fixed_files)
        io_uring_prep_multishot_accept_direct(sqe, lfd, NULL, NULL, 0);
    else
        io_uring_prep_multishot_accept(sqe, lfd, NULL, NULL, 0);
    io_uring_sqe_set_data64(sqe, encode(OP_ACCEPT, 0, lfd));
}

static void arm_recv(int fd)
{
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT | (fixed_files ? IOSQE_FIXED_FILE : 0);
    sqe->buf_group = BGID;
    io_uring_sqe_set_data64(sqe, encode(OP_RECV, 0, fd));
}

static void send_buf(int fd, int bid, unsigned off, unsigned len)
{
    struct io_uring_sqe *sqe = sqe_get();
    char *buf = slab + (size_t)bid * BUF_SIZE + off;
    if (send_zc) {
        io_uring_prep_send_zc(sqe, fd, buf, len, MSG_NOSIGNAL, 0);
        notifs[bid]++;
    } else {
        io_uring_prep_send(sqe, fd, buf, len, MSG_NOSIGNAL);
    }
    if (fixed_files)
        sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, encode(OP_SEND, bid, fd));
}

static void close_conn(int fd)
{
    if (fixed_files) {
        io_uring_prep_close_direct(sqe_get(), fd);  /* its CQE has user_data 0 */
    } else {
        close(fd);
    }
}

static void give_back(int bid)
{
    io_uring_buf_ring_add(br, slab + (size_t)bid * BUF_SIZE, BUF_SIZE, bid,
                          io_uring_buf_ring_mask(BUF_COUNT), 0);
    io_uring_buf_ring_advance(br, 1);
}

static void on_stop(int sig) { (void)sig; stop = 1; }

int main(int argc, char **argv)
{
    struct io_uring_params p;
    struct io_uring_buf_reg reg;
    struct sockaddr_in addr;
    struct io_uring_cqe *cqe;
    int lfd, one = 1, i, ret;
    unsigned head, n;

    for (i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--fixed-files")) {
            fixed_files = 1;
        } else if (!strcmp(argv[i], "--send-zc")) {
            send_zc = 1;
        } else {
            argc = 0;
            break;
        }
    }
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [--fixed-files] [--send-zc]\n", argv[0]);
        return 2;
    }
    signal(SIGTERM, on_stop);
    signal(SIGINT, on_stop);
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(lfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons(atoi(argv[1]));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) || listen(lfd, 1024)) {
        perror("bind/listen");
        return 1;
    }
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE;
    p.cq_entries = 8 * 256;
    ret = io_uring_queue_init_params(256, &ring, &p);
    if (ret < 0) {
        fprintf(stderr, "io_uring_queue_init_params: %s\n", strerror(-ret));
        return 1;
    }
    br = mmap(NULL, BUF_COUNT * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE,
              MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    slab = malloc((size_t)BUF_COUNT * BUF_SIZE);
    io_uring_buf_ring_init(br);
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (unsigned long)br;
    reg.ring_entries = BUF_COUNT;
    reg.bgid = BGID;
    if ((ret = io_uring_register_buf_ring(&ring, &reg, 0)) < 0) {
        fprintf(stderr, "register_buf_ring: %s\n", strerror(-ret));
        return 1;
    }
    if (fixed_files && (ret = io_uring_register_files_sparse(&ring, MAX_FILES)) < 0) {
        fprintf(stderr, "register_files_sparse: %s\n", strerror(-ret));
        return 1;
    }
    for (i = 0; i < BUF_COUNT; i++)
        io_uring_buf_ring_add(br, slab + (size_t)i * BUF_SIZE, BUF_SIZE, i,
                              io_uring_buf_ring_mask(BUF_COUNT), i);
    io_uring_buf_ring_advance(br, BUF_COUNT);
    arm_accept(lfd);
    /* Announced as `python -m server` does: compare waits for this line. */
    printf("{\"event\": \"listening\", \"host\": \"127.0.0.1\", \"port\": %d, "
           "\"fixed_files\": %s, \"send_zc\": %s}\n", atoi(argv[1]),
           fixed_files ? "true" : "false", send_zc ? "true" : "false");
    fflush(stdout);

    while (!stop) {
        ret = io_uring_submit_and_wait(&ring, 1);
        if (ret < 0 && ret != -EINTR) {
            fprintf(stderr, "submit_and_wait: %s\n", strerror(-ret));
            return 1;
        }
        n = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            __u64 ud = cqe->user_data;
            int op = ud >> 56, fd = (int)(ud & 0xffffffff), bid = (ud >> 32) & 0xffff;
            int res = cqe->res;
            n++;
            if (op == OP_ACCEPT) {
                if (res >= 0)
                    arm_recv(res);
                if (!(cqe->flags & IORING_CQE_F_MORE))
                    arm_accept(lfd);
            } else if (op == OP_RECV) {
                if (res > 0) {
                    int b = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
                    sent_off[b] = 0;
                    send_len[b] = res;
                    send_buf(fd, b, 0, res);
                    if (!(cqe->flags & IORING_CQE_F_MORE))
                        arm_recv(fd);
                } else if (res == -ENOBUFS) {
                    arm_recv(fd);
                } else {
                    close_conn(fd);  /* EOF or error: the minimal server just closes */
                }
            } else if (op == OP_SEND) {
                if (cqe->flags & IORING_CQE_F_NOTIF) {
                    notifs[bid]--;  /* the kernel is done with the memory */
                } else {
                    if (send_zc && !(cqe->flags & IORING_CQE_F_MORE))
                        notifs[bid]--;  /* failed: no notification follows */
                    if (res > 0 && sent_off[bid] + res < send_len[bid]) {
                        sent_off[bid] += res;  /* short send: resume */
                        send_buf(fd, bid, sent_off[bid], send_len[bid] - sent_off[bid]);
                    } else {
                        done[bid] = 1;  /* done, or the peer is gone */
                    }
                }
                if (done[bid] && !notifs[bid]) {
                    done[bid] = 0;
                    give_back(bid);
                }
            }
        }
        io_uring_cq_advance(&ring, n);
    }
    io_uring_queue_exit(&ring);
    return 0;
}
