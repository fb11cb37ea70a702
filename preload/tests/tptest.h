/* Small helpers for the preload test programs. Each program takes a
 * subcommand, prints what it checks, and exits 0 only if every check held. */
#ifndef TPTEST_H
#define TPTEST_H

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define CHECK(cond, ...)                                                        \
	do {                                                                    \
		if (!(cond)) {                                                  \
			fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                           \
			fprintf(stderr, "\n");                                  \
			exit(1);                                                \
		}                                                               \
	} while (0)

#define CHECK_ERRNO(call, want)                                                 \
	do {                                                                    \
		errno = 0;                                                      \
		int r_ = (call);                                                \
		int e_ = errno;                                                 \
		CHECK(r_ == -1 && e_ == (want), "%s returned %d errno %d (%s), want %s", \
		      #call, r_, e_, strerror(e_), #want);                      \
	} while (0)

static inline double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* "1.2.3.4" or "2001:db8::1" or "::ffff:1.2.3.4" + port -> sockaddr */
static inline socklen_t mkaddr(const char *ip, int port, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	if (strchr(ip, ':')) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(port);
		CHECK(inet_pton(AF_INET6, ip, &s6->sin6_addr) == 1, "bad address %s", ip);
		return sizeof(*s6);
	}
	struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
	s4->sin_family = AF_INET;
	s4->sin_port = htons(port);
	CHECK(inet_pton(AF_INET, ip, &s4->sin_addr) == 1, "bad address %s", ip);
	return sizeof(*s4);
}

static inline int family_of(const char *ip)
{
	return strchr(ip, ':') ? AF_INET6 : AF_INET;
}

/* "ip:port" text of a sockaddr, v4-mapped kept as written by the kernel */
static inline const char *fmt(const struct sockaddr_storage *ss, char *buf, size_t n)
{
	char ip[INET6_ADDRSTRLEN] = "?";
	int port = 0;
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *s = (const void *)ss;
		inet_ntop(AF_INET, &s->sin_addr, ip, sizeof(ip));
		port = ntohs(s->sin_port);
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s = (const void *)ss;
		inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof(ip));
		port = ntohs(s->sin6_port);
	}
	snprintf(buf, n, "%s:%d", ip, port);
	return buf;
}

static inline int port_of(const struct sockaddr_storage *ss)
{
	return ss->ss_family == AF_INET ? ntohs(((const struct sockaddr_in *)ss)->sin_port)
					: ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
}

/* The kernel's view, past any hook: who is this socket really connected to. */
static inline int raw_peer(int fd, struct sockaddr_storage *ss)
{
	socklen_t len = sizeof(*ss);
	memset(ss, 0, sizeof(*ss));
	return (int)syscall(SYS_getpeername, fd, ss, &len);
}

static inline int raw_peer_is_loopback(int fd)
{
	struct sockaddr_storage ss;
	/* Under tailproxy-exec (TPTEST_SECCOMP=1) even the raw getpeername() is answered by the
	 * supervisor; the socket's local address tells instead: a relayed socket was parked at
	 * the proxy's loopback listener, a direct one to a non-loopback address is not. */
	if (getenv("TPTEST_SECCOMP")) {
		socklen_t len = sizeof(ss);
		memset(&ss, 0, sizeof(ss));
		if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
			return 0;
	} else if (raw_peer(fd, &ss) != 0) {
		return 0;
	}
	if (ss.ss_family == AF_INET)
		return (ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) == 127;
	const struct in6_addr *a = &((struct sockaddr_in6 *)&ss)->sin6_addr;
	return IN6_IS_ADDR_LOOPBACK(a) ||
	       (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
}

/* A listener on ip:0; returns fd, port in *port. */
static inline int listener(const char *ip, int backlog, int *port)
{
	struct sockaddr_storage ss;
	socklen_t len = mkaddr(ip, 0, &ss);
	int one = 1, fd = socket(family_of(ip), SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(fd >= 0, "socket: %s", strerror(errno));
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	CHECK(bind(fd, (struct sockaddr *)&ss, len) == 0, "bind %s: %s", ip, strerror(errno));
	CHECK(listen(fd, backlog) == 0, "listen: %s", strerror(errno));
	len = sizeof(ss);
	getsockname(fd, (struct sockaddr *)&ss, &len);
	*port = port_of(&ss);
	return fd;
}

/* A port on ip with nothing listening (kept bound so nobody takes it). */
static inline int closed_port(const char *ip, int *holder)
{
	struct sockaddr_storage ss;
	socklen_t len = mkaddr(ip, 0, &ss);
	int fd = socket(family_of(ip), SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(bind(fd, (struct sockaddr *)&ss, len) == 0, "bind: %s", strerror(errno));
	len = sizeof(ss);
	getsockname(fd, (struct sockaddr *)&ss, &len);
	*holder = fd;
	return port_of(&ss);
}

/* A listener whose accept queue is full: SYNs to it are dropped, so a dial
 * to it hangs until free_slow() accepts the filler. */
struct slow {
	int lfd, filler, port;
};

static inline struct slow slow_listener(const char *ip)
{
	struct slow s;
	struct sockaddr_storage ss;
	socklen_t len;
	s.lfd = listener(ip, 0, &s.port);
	len = mkaddr(ip, s.port, &ss);
	s.filler = socket(family_of(ip), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	/* loopback-free path: the filler's connect is to a non-loopback address,
	 * so under the preload it would be proxied; use the raw syscall */
	int r = (int)syscall(SYS_connect, s.filler, &ss, len);
	CHECK(r == 0 || errno == EINPROGRESS, "filler connect: %s", strerror(errno));
	struct pollfd p = {.fd = s.filler, .events = POLLOUT};
	CHECK(poll(&p, 1, 2000) == 1, "filler did not connect");
	return s;
}

static inline void free_slow(struct slow *s)
{
	int c = accept(s->lfd, NULL, NULL);
	CHECK(c >= 0, "accept filler: %s", strerror(errno));
	close(c);
	close(s->filler);
}

static inline int so_error(int fd)
{
	int v = -1;
	socklen_t len = sizeof(v);
	CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &v, &len) == 0, "SO_ERROR: %s",
	      strerror(errno));
	return v;
}

static inline void set_nonblock(int fd, int on)
{
	int fl = fcntl(fd, F_GETFL);
	fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

static inline void write_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;
	while (n) {
		ssize_t w = write(fd, p, n);
		CHECK(w > 0, "write: %s", strerror(errno));
		p += w;
		n -= (size_t)w;
	}
}

/* read exactly n bytes (blocking fd) */
static inline void read_all(int fd, void *buf, size_t n)
{
	char *p = buf;
	while (n) {
		ssize_t r = read(fd, p, n);
		CHECK(r > 0, "read: %zd %s", r, strerror(errno));
		p += r;
		n -= (size_t)r;
	}
}

/* One ping-pong over an established pair: proves bytes flow both ways. */
static inline void exchange(int client, int server)
{
	char buf[16];
	write_all(client, "ping", 4);
	read_all(server, buf, 4);
	CHECK(memcmp(buf, "ping", 4) == 0, "server got %.4s", buf);
	write_all(server, "pong", 4);
	read_all(client, buf, 4);
	CHECK(memcmp(buf, "pong", 4) == 0, "client got %.4s", buf);
}

static inline int accept_timeout(int lfd, int ms)
{
	struct pollfd p = {.fd = lfd, .events = POLLIN};
	CHECK(poll(&p, 1, ms) == 1, "no connection reached the listener in %d ms", ms);
	int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	CHECK(c >= 0, "accept: %s", strerror(errno));
	return c;
}

/* Wait for a non-blocking connect to finish; returns the poll revents. */
static inline int wait_writable(int fd, int ms)
{
	struct pollfd p = {.fd = fd, .events = POLLOUT};
	int r = poll(&p, 1, ms);
	CHECK(r >= 0, "poll: %s", strerror(errno));
	return r == 0 ? 0 : p.revents;
}

static inline void expect_peer(int fd, const char *ip, int port)
{
	struct sockaddr_storage got, want;
	socklen_t len = sizeof(got), wlen = mkaddr(ip, port, &want);
	char a[80], b[80];
	CHECK(getpeername(fd, (struct sockaddr *)&got, &len) == 0, "getpeername: %s",
	      strerror(errno));
	CHECK(len == wlen && memcmp(&got, &want, wlen) == 0, "getpeername %s, want %s",
	      fmt(&got, a, sizeof(a)), fmt(&want, b, sizeof(b)));
}

/* TEST_TABLE_IMAGE: a routing table file to copy over TAILPROXY_TABLE in
 * place (the preload's mapping sees it), as the proxy republishing it. */
static inline void replace_table_from_env(void)
{
	const char *img = getenv("TEST_TABLE_IMAGE"), *path = getenv("TAILPROXY_TABLE");
	char buf[16384];
	ssize_t n;
	int in, out;

	if (!img || !path)
		return;
	in = open(img, O_RDONLY);
	CHECK(in >= 0, "open %s: %s", img, strerror(errno));
	n = read(in, buf, sizeof(buf));
	CHECK(n > 0, "read %s", img);
	close(in);
	out = open(path, O_WRONLY);
	CHECK(out >= 0 && pwrite(out, buf, n, 0) == n, "rewrite %s: %s", path, strerror(errno));
	close(out);
}

#endif
