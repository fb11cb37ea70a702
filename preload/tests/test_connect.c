/* connect() on blocking sockets through the proxy.
 *   test_connect ok IP            listener on IP, blocking connect, bytes both ways
 *   test_connect refused IP       closed port: ECONNREFUSED, SO_ERROR clean after
 *   test_connect unreach IP PORT  EHOSTUNREACH from the proxy's dial
 *   test_connect direct IP        connected straight to IP (loopback / bypass / inert)
 *   test_connect mapped IP4       AF_INET6 socket to ::ffff:IP4, proxied
 *   test_connect udp IP           UDP connect untouched
 *   test_connect opts IP          fd, options, flags and bind() survive
 *   test_connect sndtimeo IP      SO_SNDTIMEO bounds a slow dial: EINPROGRESS
 *   test_connect netdown IP       no proxy: ENETDOWN (blocking and not)
 *   test_connect eintr-poll IP    EINTR, then wait by poll()+SO_ERROR (POSIX's way)
 *   test_connect eintr IP         a signal during a slow dial: EINTR, no second dial
 *                                 (TEST_TABLE_IMAGE: the routing table turns direct meanwhile)
 */
#include "tptest.h"

#include <signal.h>

static int tcp_socket(const char *ip)
{
	int fd = socket(family_of(ip), SOCK_STREAM, 0);
	CHECK(fd >= 0, "socket: %s", strerror(errno));
	return fd;
}

static int do_connect(int fd, const char *ip, int port)
{
	struct sockaddr_storage ss;
	socklen_t len = mkaddr(ip, port, &ss);
	return connect(fd, (struct sockaddr *)&ss, len);
}

static void t_ok(const char *ip)
{
	int port, lfd = listener(ip, 16, &port), fd = tcp_socket(ip), c;

	errno = 4242;
	CHECK(do_connect(fd, ip, port) == 0, "connect: %s", strerror(errno));
	CHECK(errno == 4242, "errno changed on success: %d", errno);
	CHECK(raw_peer_is_loopback(fd), "socket is not relayed by the proxy");
	c = accept_timeout(lfd, 5000);
	exchange(fd, c);
	expect_peer(fd, ip, port);
	CHECK(so_error(fd) == 0, "SO_ERROR after connect");
	/* connected: a second connect is the kernel's EISCONN */
	CHECK_ERRNO(do_connect(fd, ip, port), EISCONN);
	printf("ok: connected to %s:%d through the relay\n", ip, port);
}

static void t_refused(const char *ip)
{
	int holder, port = closed_port(ip, &holder), fd = tcp_socket(ip);

	CHECK_ERRNO(do_connect(fd, ip, port), ECONNREFUSED);
	CHECK(so_error(fd) == 0, "SO_ERROR not cleared after a failed blocking connect");
	printf("ok: ECONNREFUSED\n");
}

static void t_unreach(const char *ip, int port)
{
	int fd = tcp_socket(ip);

	CHECK_ERRNO(do_connect(fd, ip, port), EHOSTUNREACH);
	CHECK(so_error(fd) == 0, "SO_ERROR not cleared after a failed blocking connect");
	printf("ok: EHOSTUNREACH\n");
}

static void t_direct(const char *ip)
{
	/* a mapped or unspecified destination is reached through a listener on
	 * the corresponding plain address */
	const char *lip = !strncmp(ip, "::ffff:", 7) ? ip + 7 : ip;
	int port, lfd = listener(lip, 16, &port), fd = tcp_socket(ip), c;
	int any = !strcmp(ip, "0.0.0.0") || !strcmp(ip, "::");
	struct sockaddr_storage peer, want;
	socklen_t wlen = mkaddr(ip, port, &want);
	char a[80];

	CHECK(do_connect(fd, ip, port) == 0, "connect: %s", strerror(errno));
	CHECK(raw_peer(fd, &peer) == 0, "raw getpeername");
	if (any)
		CHECK(raw_peer_is_loopback(fd), "not connected locally: %s", fmt(&peer, a, sizeof(a)));
	else
		CHECK(memcmp(&peer, &want, wlen) == 0, "not connected directly: %s",
		      fmt(&peer, a, sizeof(a)));
	c = accept_timeout(lfd, 2000);
	exchange(fd, c);
	printf("ok: direct to %s:%d\n", ip, port);
}

static void t_mapped(const char *ip4)
{
	char m[64];
	int port, lfd = listener(ip4, 16, &port), fd = socket(AF_INET6, SOCK_STREAM, 0), c;

	snprintf(m, sizeof(m), "::ffff:%s", ip4);
	CHECK(do_connect(fd, m, port) == 0, "connect: %s", strerror(errno));
	CHECK(raw_peer_is_loopback(fd), "socket is not relayed by the proxy");
	c = accept_timeout(lfd, 5000);
	exchange(fd, c);
	expect_peer(fd, m, port);
	printf("ok: v4-mapped %s:%d relayed\n", m, port);
}

static void t_udp(const char *ip)
{
	int fd = socket(family_of(ip), SOCK_DGRAM, 0);
	struct sockaddr_storage peer, want;
	socklen_t wlen = mkaddr(ip, 9999, &want);

	CHECK(do_connect(fd, ip, 9999) == 0, "udp connect: %s", strerror(errno));
	CHECK(raw_peer(fd, &peer) == 0 && memcmp(&peer, &want, wlen) == 0, "udp peer changed");
	expect_peer(fd, ip, 9999);
	printf("ok: udp untouched\n");
}

static int getint(int fd, int level, int name)
{
	int v = -1;
	socklen_t len = sizeof(v);
	CHECK(getsockopt(fd, level, name, &v, &len) == 0, "getsockopt %d: %s", name,
	      strerror(errno));
	return v;
}

static void t_opts(const char *ip)
{
	int port, lfd = listener(ip, 16, &port), one = 1, c, bport;
	int fd = socket(family_of(ip), SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_storage ss;
	socklen_t len;
	int bind_holder;

	/* a fixed local port chosen by the program, wildcard address */
	bport = closed_port(family_of(ip) == AF_INET6 ? "::" : "0.0.0.0", &bind_holder);
	close(bind_holder);
	/* fd number: move it somewhere recognisable */
	CHECK(dup2(fd, 77) == 77, "dup2");
	close(fd);
	fd = 77;
	fcntl(fd, F_SETFD, FD_CLOEXEC);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	len = mkaddr(family_of(ip) == AF_INET6 ? "::" : "0.0.0.0", bport, &ss);
	CHECK(bind(fd, (struct sockaddr *)&ss, len) == 0, "bind: %s", strerror(errno));

	CHECK(do_connect(fd, ip, port) == 0, "connect: %s", strerror(errno));
	CHECK(raw_peer_is_loopback(fd), "socket is not relayed by the proxy");
	c = accept_timeout(lfd, 5000);
	exchange(fd, c);
	CHECK(getint(fd, IPPROTO_TCP, TCP_NODELAY) == 1, "TCP_NODELAY lost");
	CHECK(getint(fd, SOL_SOCKET, SO_KEEPALIVE) == 1, "SO_KEEPALIVE lost");
	CHECK(getint(fd, SOL_SOCKET, SO_DOMAIN) == family_of(ip), "family changed");
	CHECK(getint(fd, SOL_SOCKET, SO_TYPE) == SOCK_STREAM, "type changed");
	CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC, "FD_CLOEXEC lost");
	CHECK(!(fcntl(fd, F_GETFL) & O_NONBLOCK), "O_NONBLOCK appeared");
	len = sizeof(ss);
	CHECK(getsockname(fd, (struct sockaddr *)&ss, &len) == 0, "getsockname");
	CHECK(port_of(&ss) == bport, "bound port %d became %d", bport, port_of(&ss));
	expect_peer(fd, ip, port);
	printf("ok: fd 77, options, flags and bound port %d kept\n", bport);
}

static void t_sndtimeo(const char *ip)
{
	struct slow s = slow_listener(ip);
	struct timeval tv = {.tv_sec = 0, .tv_usec = 300000};
	int fd = tcp_socket(ip), c;
	double t0;

	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	t0 = now_s();
	CHECK_ERRNO(do_connect(fd, ip, s.port), EINPROGRESS);
	CHECK(now_s() - t0 >= 0.25 && now_s() - t0 < 2.0, "waited %.3f s", now_s() - t0);
	/* the dial goes on; a repeated connect waits SO_SNDTIMEO again, then
	 * EALREADY; it never starts another dial */
	CHECK_ERRNO(do_connect(fd, ip, s.port), EALREADY);
	free_slow(&s);
	c = accept_timeout(s.lfd, 10000);
	CHECK(wait_writable(fd, 10000) & POLLOUT, "never became writable");
	CHECK(so_error(fd) == 0, "SO_ERROR after completion");
	exchange(fd, c);
	expect_peer(fd, ip, s.port);
	struct pollfd p = {.fd = s.lfd, .events = POLLIN};
	CHECK(poll(&p, 1, 300) == 0, "a second connection arrived");
	printf("ok: SO_SNDTIMEO gave EINPROGRESS after %.3f s, completed later\n", now_s() - t0);
}

/* No proxy behind TAILPROXY_SOCKET: ENETDOWN for blocking and non-blocking
 * connects; the stderr line is the driver's to count. */
static void t_netdown(const char *ip)
{
	int i;

	for (i = 0; i < 3; i++) {
		int fd = tcp_socket(ip);
		CHECK_ERRNO(do_connect(fd, ip, 80), ENETDOWN);
		close(fd);
		fd = socket(family_of(ip), SOCK_STREAM | SOCK_NONBLOCK, 0);
		CHECK_ERRNO(do_connect(fd, ip, 80), ENETDOWN);
		close(fd);
	}
	printf("ok: ENETDOWN\n");
}

static void on_alarm(int sig)
{
	(void)sig;
}

static void t_eintr(const char *ip)
{
	struct slow s = slow_listener(ip);
	struct sigaction sa;
	struct itimerval it = {.it_value = {.tv_sec = 0, .tv_usec = 200000}};
	int fd = tcp_socket(ip), c, r, e;
	double t0;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm;   /* no SA_RESTART: the call must fail with EINTR */
	sigaction(SIGALRM, &sa, NULL);
	setitimer(ITIMER_REAL, &it, NULL);
	t0 = now_s();
	r = do_connect(fd, ip, s.port);
	e = errno;
	CHECK(r == -1 && e == EINTR, "connect gave %d %s, want EINTR", r, strerror(e));
	CHECK(now_s() - t0 < 2.0, "EINTR came late");
	/* the table may turn direct now: a pending socket still waits for the proxy */
	replace_table_from_env();
	/* the proxy finishes in the background; a repeated blocking connect
	 * waits for that outcome (here: interrupted again), never dials again */
	setitimer(ITIMER_REAL, &it, NULL);
	CHECK_ERRNO(do_connect(fd, ip, s.port), EINTR);
	free_slow(&s);
	c = accept_timeout(s.lfd, 10000);
	/* completes: 0 like the kernel's restarted connect, then EISCONN */
	r = do_connect(fd, ip, s.port);
	CHECK(r == 0, "connect after completion: %s", strerror(errno));
	CHECK_ERRNO(do_connect(fd, ip, s.port), EISCONN);
	CHECK(so_error(fd) == 0, "SO_ERROR after completion");
	exchange(fd, c);
	expect_peer(fd, ip, s.port);
	/* exactly one connection reached the listener */
	struct pollfd p = {.fd = s.lfd, .events = POLLIN};
	CHECK(poll(&p, 1, 300) == 0, "a second connection arrived");
	printf("ok: EINTR, then completed in the background\n");
}

/* After EINTR, POSIX says: the connect goes on; wait for writability, then
 * read SO_ERROR. Nothing may show until the dial completes. */
static void t_eintr_poll(const char *ip)
{
	struct slow s = slow_listener(ip);
	struct sigaction sa;
	struct itimerval it = {.it_value = {.tv_sec = 0, .tv_usec = 200000}};
	int fd = tcp_socket(ip), c, ev;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, NULL);
	setitimer(ITIMER_REAL, &it, NULL);
	CHECK_ERRNO(do_connect(fd, ip, s.port), EINTR);
	/* still in progress: no event yet */
	ev = wait_writable(fd, 300);
	CHECK(ev == 0, "events %#x while the dial is still pending", ev);
	free_slow(&s);
	c = accept_timeout(s.lfd, 10000);
	CHECK(wait_writable(fd, 10000) & POLLOUT, "never became writable");
	CHECK(so_error(fd) == 0, "SO_ERROR after completion");
	exchange(fd, c);
	printf("ok: EINTR, then poll + SO_ERROR\n");
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	CHECK(argc >= 3, "usage: %s MODE IP [PORT]", argv[0]);
	const char *m = argv[1], *ip = argv[2];
	if (!strcmp(m, "ok"))
		t_ok(ip);
	else if (!strcmp(m, "refused"))
		t_refused(ip);
	else if (!strcmp(m, "unreach"))
		t_unreach(ip, argc > 3 ? atoi(argv[3]) : 80);
	else if (!strcmp(m, "direct"))
		t_direct(ip);
	else if (!strcmp(m, "mapped"))
		t_mapped(ip);
	else if (!strcmp(m, "udp"))
		t_udp(ip);
	else if (!strcmp(m, "opts"))
		t_opts(ip);
	else if (!strcmp(m, "sndtimeo"))
		t_sndtimeo(ip);
	else if (!strcmp(m, "netdown"))
		t_netdown(ip);
	else if (!strcmp(m, "eintr-poll"))
		t_eintr_poll(ip);
	else if (!strcmp(m, "eintr"))
		t_eintr(ip);
	else
		CHECK(0, "unknown mode %s", m);
	return 0;
}
