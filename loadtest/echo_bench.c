/*
 * A native echo saturation client: N connections on one epoll loop, each
 * sending a 64-byte message and waiting for exactly those bytes back before
 * sending the next (ping-pong).  It exists because a Python client runs out
 * of CPU at about the rate a Python server does; this one costs a fraction
 * of the server per message, so the server is what gets measured.  It checks
 * every echoed byte, prints the loadtest window markers on stderr, and one
 * JSON line on stdout in the same shape as loadtest/client.py.
 *
 * Build: cc -O2 -o echo_bench loadtest/echo_bench.c
 * Usage: echo_bench HOST PORT CONNECTIONS DURATION_S WARMUP_S
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define MSG 64
#define MAX_LAT (1u << 24)

struct conn { int fd; unsigned got; uint64_t seq, sent_ns; char out[MSG], in[MSG]; };

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* The next message: the connection's number and sequence, then a letter that changes. */
static int send_next(struct conn *c, unsigned idx)
{
    snprintf(c->out, sizeof(c->out), "%08u:%016llu:", idx, (unsigned long long)c->seq);
    memset(c->out + 26, 'a' + (c->seq % 26), MSG - 26);
    return write(c->fd, c->out, MSG) == MSG ? 0 : 1;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    struct sockaddr_in addr = {.sin_family = AF_INET};
    struct epoll_event ev = {.events = EPOLLIN}, evs[512];
    uint64_t start, open_at, close_at, messages = 0, errors = 0, nlat = 0;
    double cpu0 = 0, cpu1, sum_us = 0, duration, warmup;
    int n, ep, i, one = 1, in_window = 0;

    if (argc != 6) {
        fprintf(stderr, "usage: %s HOST PORT CONNECTIONS DURATION_S WARMUP_S\n", argv[0]);
        return 2;
    }
    n = atoi(argv[3]), duration = atof(argv[4]), warmup = atof(argv[5]);
    addr.sin_port = htons(atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "bad IPv4 address %s\n", argv[1]);
        return 2;
    }
    struct conn *conns = calloc(n, sizeof(*conns));
    uint32_t *lat = malloc(sizeof(uint32_t) * MAX_LAT);
    ep = epoll_create1(0);
    for (i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr))) {
            perror("connect");
            return 1;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        fcntl(fd, F_SETFL, O_NONBLOCK);
        conns[i].fd = fd;
        ev.data.u32 = i;
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    start = now_ns(), open_at = start + (uint64_t)(warmup * 1e9);
    close_at = open_at + (uint64_t)(duration * 1e9);
    for (i = 0; i < n; i++) {
        conns[i].sent_ns = start;
        errors += send_next(&conns[i], i);
    }
    for (;;) {
        uint64_t t = now_ns();
        if (!in_window && t >= open_at) {
            in_window = 1, cpu0 = cpu_s();
            fprintf(stderr, "ringserve-loadtest: measurement window start\n");
        }
        if (t >= close_at)
            break;
        int k = epoll_wait(ep, evs, 512, 100);
        for (int j = 0; j < k; j++) {
            struct conn *c = &conns[evs[j].data.u32];
            ssize_t r = read(c->fd, c->in + c->got, MSG - c->got);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN)
                    continue;
                errors++;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                continue;
            }
            if ((c->got += r) < MSG)
                continue;
            c->got = 0;
            t = now_ns();
            if (memcmp(c->in, c->out, MSG))
                errors++;
            else if (in_window) {
                uint32_t us = (uint32_t)((t - c->sent_ns) / 1000);
                messages++, sum_us += us;
                if (nlat < MAX_LAT)
                    lat[nlat++] = us;
            }
            c->seq++, c->sent_ns = t;
            errors += send_next(c, evs[j].data.u32);
        }
    }
    cpu1 = cpu_s();
    fprintf(stderr, "ringserve-loadtest: measurement window end\n");
    qsort(lat, nlat, sizeof(uint32_t), cmp_u32);
#define PCT(p) (nlat ? lat[(size_t)((nlat - 1) * (p))] / 1000.0 : 0.0)
    printf("{\"connections\": %d, \"processes\": 1, \"pipeline\": 1, \"message_bytes\": %d, "
           "\"duration_s\": %.3f, \"messages\": %llu, \"messages_per_s\": %.1f, "
           "\"errors\": %llu, \"avg_ms\": %.4f, \"p50_ms\": %.3f, \"p90_ms\": %.3f, "
           "\"p99_ms\": %.3f, \"cpu_s\": %.3f, \"cpu_util\": %.3f, \"client\": \"native\"}\n",
           n, MSG, duration, (unsigned long long)messages, messages / duration,
           (unsigned long long)errors, nlat ? sum_us / nlat / 1000.0 : 0.0, PCT(0.5), PCT(0.9),
           PCT(0.99), cpu1 - cpu0, (cpu1 - cpu0) / duration);
    return 0;
}
