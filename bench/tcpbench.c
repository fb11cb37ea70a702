/* tcpbench: the small TCP load tool of tailproxy's benchmarks (bench/run.py builds it with gcc -O2).
 *
 *   tcpbench echo-server PORT [ADDR]   echo every byte back (epoll, any number of connections)
 *   tcpbench sink-server PORT [ADDR]   read and discard; reports nothing (unless TCPBENCH_SINK_LOG=1:
 *                                      then one "sink: N bytes first=T last=T" line on stderr per
 *                                      closed connection, T = CLOCK_MONOTONIC of its first/last byte;
 *                                      with TCPBENCH_SINK_EXPECT=BYTES too, that line comes as soon as
 *                                      a connection has BYTES, without waiting for its close)
 *   tcpbench connloop HOST PORT N      N sequential: connect, write 1 byte, read 1 byte, close
 *   tcpbench bulk HOST PORT BYTES      connect, write BYTES from a 256 KiB buffer, shutdown(SHUT_WR),
 *                                      wait for the peer's close; Gbit/s (and t0, the CLOCK_MONOTONIC
 *                                      of the first write: with the sink's last-byte time this gives
 *                                      the delivered rate even where a close arrives early)
 *   tcpbench connlat HOST PORT N       N sequential connects (connect() time only), median/p90 µs
 *   tcpbench hold HOST PORT N          open N connections (each: connect + 1-byte echo), print
 *                                      "held N", keep them open until stdin closes
 *   tcpbench stamp                     print "stamp t_main=T" (T = CLOCK_MONOTONIC at main's start)
 *   tcpbench first HOST PORT           one connect + 1-byte echo + close: "first t_main=T t_done=T"
 *                                      (start-up figures: the caller notes the clock before it starts
 *                                      the program, CLOCK_MONOTONIC being shared by all namespaces)
 *
 * Servers print "listening ADDR PORT" on stdout once ready (PORT 0 = any free port).
 * Clients print one line of key=value results on stdout; errors go to stderr with exit status 1.
 * All sockets are ordinary blocking sockets: what an unmodified simple client does.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define BULK_BUF (256 * 1024)

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "tcpbench: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int parse_addr(const char *host, const char *port, struct sockaddr_storage *ss, socklen_t *len) {
    struct addrinfo hints = {0}, *res;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "tcpbench: bad address %s port %s: %s\n", host, port, gai_strerror(rc));
        exit(2);
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/* ---------------------------------------------------------------- servers */

struct conn {
    int fd;
    char *buf;      /* echo: bytes read but not yet written back */
    size_t len, off;
    unsigned long long total;
    double first, last; /* CLOCK_MONOTONIC of the first and the last byte read */
    int logged;
};

static void sink_report(struct conn *c) {
    fprintf(stderr, "sink: %llu bytes first=%.6f last=%.6f\n", c->total, c->first, c->last);
    c->logged = 1;
}

static int listen_on(const char *addr, const char *port) {
    struct sockaddr_storage ss;
    socklen_t len;
    parse_addr(addr, port, &ss, &len);
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, len) < 0) die("bind");
    if (listen(fd, 4096) < 0) die("listen");
    len = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &len);
    char host[64];
    uint16_t p;
    if (ss.ss_family == AF_INET) {
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, host, sizeof host);
        p = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    } else {
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, host, sizeof host);
        p = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    printf("listening %s %u\n", host, p);
    fflush(stdout);
    return fd;
}

__attribute__((noreturn)) static void serve(const char *port, const char *addr, int echo) {
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    int lfd = listen_on(addr, port);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    int sinklog = getenv("TCPBENCH_SINK_LOG") && !echo;
    const char *ex = getenv("TCPBENCH_SINK_EXPECT");
    unsigned long long expect = ex ? strtoull(ex, NULL, 10) : 0;
    size_t bufsz = echo ? 65536 : BULK_BUF;
    char *scratch = malloc(BULK_BUF);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    c = calloc(1, sizeof *c);
                    c->fd = fd;
                    if (echo) c->buf = malloc(bufsz);
                    struct epoll_event e = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
                }
                continue;
            }
            int closeit = 0;
            if (echo && c->len > c->off) { /* flush what is pending first */
                ssize_t w = write(c->fd, c->buf + c->off, c->len - c->off);
                if (w < 0 && errno != EAGAIN) closeit = 1;
                else if (w > 0) c->off += w;
                if (!closeit && c->off == c->len) {
                    c->off = c->len = 0;
                    struct epoll_event e = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
                }
                if (!closeit) continue;
            }
            while (!closeit) {
                ssize_t r = read(c->fd, echo ? c->buf : scratch, echo ? bufsz : BULK_BUF);
                if (r == 0) { closeit = 1; break; }
                if (r < 0) {
                    if (errno != EAGAIN) closeit = 1;
                    break;
                }
                if (sinklog) {
                    c->last = now();
                    if (!c->total) c->first = c->last;
                }
                c->total += r;
                if (sinklog && expect && !c->logged && c->total >= expect) sink_report(c);
                if (echo) {
                    ssize_t w = write(c->fd, c->buf, r);
                    if (w < 0 && errno != EAGAIN) { closeit = 1; break; }
                    if (w < 0) w = 0;
                    if (w < r) {
                        c->len = r;
                        c->off = w;
                        struct epoll_event e = {.events = EPOLLOUT, .data.ptr = c};
                        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
                        break;
                    }
                }
                if (r < (ssize_t)(echo ? bufsz : BULK_BUF)) break;
            }
            if (closeit) {
                if (sinklog && !c->logged) sink_report(c);
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                free(c->buf);
                free(c);
            }
        }
    }
}

/* ---------------------------------------------------------------- clients */

static int dial(struct sockaddr_storage *ss, socklen_t len) {
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    if (connect(fd, (struct sockaddr *)ss, len) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static int ping1(int fd) {
    char b = 'x';
    if (write(fd, &b, 1) != 1) return -1;
    ssize_t r = read(fd, &b, 1);
    if (r != 1) {
        if (r == 0) errno = ECONNRESET;
        return -1;
    }
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(double *v, long n, double p) {
    long i = (long)(p * (n - 1) + 0.5);
    return v[i];
}

static int connloop(const char *host, const char *port, long n) {
    struct sockaddr_storage ss;
    socklen_t len;
    parse_addr(host, port, &ss, &len);
    double *each = malloc(sizeof(double) * (n ? n : 1));
    double t0 = now();
    for (long i = 0; i < n; i++) {
        double a = now();
        int fd = dial(&ss, len);
        if (fd < 0) {
            fprintf(stderr, "tcpbench: connloop: connect #%ld: %s\n", i, strerror(errno));
            return 1;
        }
        if (ping1(fd) < 0) {
            fprintf(stderr, "tcpbench: connloop: echo #%ld: %s\n", i, strerror(errno));
            return 1;
        }
        close(fd);
        each[i] = (now() - a) * 1e6;
    }
    double t = now() - t0;
    qsort(each, n, sizeof(double), cmp_double);
    printf("connloop n=%ld total_s=%.4f per_conn_us=%.1f median_us=%.1f p90_us=%.1f\n", n, t,
           t / n * 1e6, pct(each, n, 0.5), pct(each, n, 0.9));
    return 0;
}

static int connlat(const char *host, const char *port, long n) {
    struct sockaddr_storage ss;
    socklen_t len;
    parse_addr(host, port, &ss, &len);
    double *v = malloc(sizeof(double) * (n ? n : 1));
    for (long i = 0; i < n; i++) {
        int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) die("socket");
        double a = now();
        if (connect(fd, (struct sockaddr *)&ss, len) < 0) {
            fprintf(stderr, "tcpbench: connlat: connect #%ld: %s\n", i, strerror(errno));
            return 1;
        }
        v[i] = (now() - a) * 1e6;
        close(fd);
    }
    qsort(v, n, sizeof(double), cmp_double);
    printf("connlat n=%ld median_us=%.1f p90_us=%.1f min_us=%.1f max_us=%.1f\n", n, pct(v, n, 0.5),
           pct(v, n, 0.9), v[0], v[n - 1]);
    return 0;
}

static int bulk(const char *host, const char *port, unsigned long long bytes) {
    struct sockaddr_storage ss;
    socklen_t len;
    parse_addr(host, port, &ss, &len);
    signal(SIGPIPE, SIG_IGN);
    char *buf = malloc(BULK_BUF);
    for (size_t i = 0; i < BULK_BUF; i++) buf[i] = (char)(i * 131 + 7);
    int fd = dial(&ss, len);
    if (fd < 0) die("bulk: connect");
    double t0 = now();
    unsigned long long left = bytes;
    while (left > 0) {
        size_t k = left < BULK_BUF ? left : BULK_BUF;
        ssize_t w = write(fd, buf, k);
        if (w < 0) {
            if (errno == EINTR) continue;
            fprintf(stderr, "tcpbench: bulk: write after %llu bytes: %s\n", bytes - left, strerror(errno));
            return 1;
        }
        left -= w;
    }
    if (shutdown(fd, SHUT_WR) < 0) die("bulk: shutdown");
    for (;;) { /* wait for the sink's close */
        ssize_t r = read(fd, buf, BULK_BUF);
        if (r == 0) break;
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == ECONNRESET) break;
            die("bulk: read");
        }
    }
    double t = now() - t0;
    close(fd);
    printf("bulk bytes=%llu seconds=%.4f gbit_s=%.3f t0=%.6f\n", bytes, t, bytes * 8.0 / t / 1e9, t0);
    return 0;
}

static int hold(const char *host, const char *port, long n) {
    raise_nofile();
    struct sockaddr_storage ss;
    socklen_t len;
    parse_addr(host, port, &ss, &len);
    int *fds = malloc(sizeof(int) * (n ? n : 1));
    double t0 = now();
    for (long i = 0; i < n; i++) {
        fds[i] = dial(&ss, len);
        if (fds[i] < 0) {
            fprintf(stderr, "tcpbench: hold: connect #%ld: %s\n", i, strerror(errno));
            return 1;
        }
        if (ping1(fds[i]) < 0) {
            fprintf(stderr, "tcpbench: hold: echo #%ld: %s\n", i, strerror(errno));
            return 1;
        }
    }
    printf("held %ld seconds=%.3f\n", n, now() - t0);
    fflush(stdout);
    char b[256];
    while (read(0, b, sizeof b) > 0) {
    }
    for (long i = 0; i < n; i++) close(fds[i]);
    return 0;
}

static void usage(void) {
    fprintf(stderr,
            "usage: tcpbench echo-server PORT [ADDR] | sink-server PORT [ADDR] |\n"
            "       connloop HOST PORT N | bulk HOST PORT BYTES | connlat HOST PORT N | hold HOST PORT N |\n"
            "       stamp | first HOST PORT\n");
    exit(2);
}

static int first(double t_main, const char *host, const char *port) {
    struct sockaddr_storage ss;
    socklen_t len;
    parse_addr(host, port, &ss, &len);
    int fd = dial(&ss, len);
    if (fd < 0) {
        fprintf(stderr, "tcpbench: first: connect: %s\n", strerror(errno));
        return 1;
    }
    if (ping1(fd) < 0) {
        fprintf(stderr, "tcpbench: first: echo: %s\n", strerror(errno));
        return 1;
    }
    close(fd);
    printf("first t_main=%.6f t_done=%.6f\n", t_main, now());
    return 0;
}

int main(int argc, char **argv) {
    double t_main = now();
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 2 && !strcmp(argv[1], "stamp")) {
        printf("stamp t_main=%.6f\n", t_main);
        return 0;
    }
    if (argc == 4 && !strcmp(argv[1], "first")) return first(t_main, argv[2], argv[3]);
    if (argc < 3) usage();
    const char *m = argv[1];
    if (!strcmp(m, "echo-server")) serve(argv[2], argc > 3 ? argv[3] : "0.0.0.0", 1);
    if (!strcmp(m, "sink-server")) serve(argv[2], argc > 3 ? argv[3] : "0.0.0.0", 0);
    if (argc < 5) usage();
    char *end;
    unsigned long long n = strtoull(argv[4], &end, 10);
    if (*end) usage();
    if (!strcmp(m, "connloop")) return n ? connloop(argv[2], argv[3], (long)n) : 0;
    if (!strcmp(m, "connlat")) return n ? connlat(argv[2], argv[3], (long)n) : 0;
    if (!strcmp(m, "bulk")) return bulk(argv[2], argv[3], n);
    if (!strcmp(m, "hold")) return hold(argv[2], argv[3], (long)n);
    usage();
    return 2;
}
