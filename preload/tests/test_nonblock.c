/* connect() on non-blocking sockets: EINPROGRESS at once, completion by
 * writability, outcome in SO_ERROR (the real errno, not the kernel's view).
 *   test_nonblock ok IP poll|epoll        slow dial: parked (no events), then completes
 *   test_nonblock refused IP poll|epoll   SO_ERROR = ECONNREFUSED, once
 *   test_nonblock unreach IP poll|epoll   SO_ERROR = EHOSTUNREACH (kernel shows ECONNREFUSED)
 *   test_nonblock again IP                EALREADY while parked, then 0/EISCONN
 *   test_nonblock again-fail IP           repeated connect after failure gives the real errno
 *   test_nonblock again-refused IP        the same to a closed port: ECONNREFUSED, no new dial
 *                                         (both: TEST_TABLE_IMAGE replaces the routing table
 *                                         before the repeated connect)
 *   test_nonblock stress IP N             N connects, alternating success and failure, each
 *                                         checked the moment an event arrives (the proxy's
 *                                         hand-over from parking to relay must not show)
 */
#include "tptest.h"

#include <sys/epoll.h>

static int nb_socket(const char *ip)
{
	int fd = socket(family_of(ip), SOCK_STREAM | SOCK_NONBLOCK, 0);
	CHECK(fd >= 0, "socket: %s", strerror(errno));
	return fd;
}

static int do_connect(int fd, const char *ip, int port)
{
	struct sockaddr_storage ss;
	socklen_t len = mkaddr(ip, port, &ss);
	return connect(fd, (struct sockaddr *)&ss, len);
}

/* Start a connect: must be EINPROGRESS and immediate. */
static void start(int fd, const char *ip, int port)
{
	double t0 = now_s();
	errno = 0;
	int r = do_connect(fd, ip, port), e = errno;
	CHECK(r == -1 && e == EINPROGRESS, "connect gave %d %s, want EINPROGRESS", r, strerror(e));
	CHECK(now_s() - t0 < 0.5, "non-blocking connect took %.3f s", now_s() - t0);
}

/* Wait for completion with poll or epoll; returns the events seen. */
static int wait_done(int fd, const char *how, int ms)
{
	if (!strcmp(how, "poll"))
		return wait_writable(fd, ms);
	int ep = epoll_create1(EPOLL_CLOEXEC), n;
	struct epoll_event ev = {.events = EPOLLOUT | EPOLLET}, got;
	CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0, "epoll_ctl: %s", strerror(errno));
	n = epoll_wait(ep, &got, 1, ms);
	close(ep);
	CHECK(n >= 0, "epoll_wait: %s", strerror(errno));
	return n == 0 ? 0 : (int)got.events;
}

static void t_ok(const char *ip, const char *how)
{
	struct slow s = slow_listener(ip);
	int fd = nb_socket(ip), c, ev;
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	start(fd, ip, s.port);
	/* parked like a SYN in flight: no events, nothing to report yet */
	CHECK(wait_done(fd, how, 300) == 0, "events while the dial is pending");
	CHECK(so_error(fd) == 0, "SO_ERROR while pending");
	errno = 0;
	CHECK(getpeername(fd, (struct sockaddr *)&ss, &len) == -1 && errno == ENOTCONN,
	      "getpeername while pending: %s", strerror(errno));
	free_slow(&s);
	ev = wait_done(fd, how, 10000);
	CHECK(ev & POLLOUT, "not writable after completion (events %#x)", ev);
	CHECK(so_error(fd) == 0, "SO_ERROR after success");
	c = accept_timeout(s.lfd, 5000);
	set_nonblock(fd, 0);
	exchange(fd, c);
	expect_peer(fd, ip, s.port);
	CHECK(raw_peer_is_loopback(fd), "socket is not relayed by the proxy");
	printf("ok: non-blocking connect via %s\n", how);
}

static void t_fail(const char *ip, int port, int want, const char *how)
{
	int fd = nb_socket(ip), ev, got;

	start(fd, ip, port);
	ev = wait_done(fd, how, 10000);
	CHECK(ev & (POLLOUT | POLLERR), "no completion event (events %#x)", ev);
	got = so_error(fd);
	CHECK(got == want, "SO_ERROR %d (%s), want %d (%s)", got, strerror(got), want,
	      strerror(want));
	/* read once, like the kernel */
	got = so_error(fd);
	CHECK(got == 0, "second SO_ERROR %d (%s), want 0", got, strerror(got));
	printf("ok: SO_ERROR %s via %s\n", strerror(want), how);
}

static void t_again(const char *ip)
{
	struct slow s = slow_listener(ip);
	int fd = nb_socket(ip), r, c;

	start(fd, ip, s.port);
	CHECK_ERRNO(do_connect(fd, ip, s.port), EALREADY);
	CHECK_ERRNO(do_connect(fd, ip, s.port), EALREADY);
	free_slow(&s);
	c = accept_timeout(s.lfd, 10000);
	CHECK(wait_writable(fd, 10000) & POLLOUT, "not writable");
	/* done: 0 (the first to learn it) or EISCONN, never a new dial */
	errno = 0;
	r = do_connect(fd, ip, s.port);
	CHECK(r == 0 || errno == EISCONN, "connect after completion: %s", strerror(errno));
	CHECK_ERRNO(do_connect(fd, ip, s.port), EISCONN);
	set_nonblock(fd, 0);
	exchange(fd, c);
	struct pollfd p = {.fd = s.lfd, .events = POLLIN};
	CHECK(poll(&p, 1, 300) == 0, "a second connection arrived");
	printf("ok: EALREADY while pending, EISCONN after\n");
}

static void t_again_fail(const char *ip, int port, int want)
{
	int fd = nb_socket(ip);

	start(fd, ip, port);
	CHECK(wait_writable(fd, 10000), "no completion event");
	/* the table may turn direct now: the socket's outcome is still the proxy's */
	replace_table_from_env();
	/* the program learns the outcome from connect() instead of SO_ERROR */
	CHECK_ERRNO(do_connect(fd, ip, port), want);
	printf("ok: repeated connect gave %s\n", strerror(want));
}

static void t_stress(const char *ip, int n, const char *how)
{
	int port, lfd = listener(ip, 1024, &port), holder, closed = closed_port(ip, &holder);
	int i, ok = 0, refused = 0;

	for (i = 0; i < n; i++) {
		int fail = i % 2, fd = nb_socket(ip), ev, got;

		start(fd, ip, fail ? closed : port);
		/* act on the first event, as an event loop does */
		ev = wait_done(fd, how, 10000);
		CHECK(ev, "no event for connect %d", i);
		got = so_error(fd);
		if (fail) {
			CHECK(got == ECONNREFUSED, "connect %d: SO_ERROR %s, want refused", i,
			      strerror(got));
			refused++;
		} else {
			char b;
			int c;
			CHECK(got == 0, "connect %d: SO_ERROR %s, want 0", i, strerror(got));
			/* usable at once: a byte goes through */
			CHECK(write(fd, "s", 1) == 1, "connect %d: write: %s", i, strerror(errno));
			c = accept_timeout(lfd, 5000);
			read_all(c, &b, 1);
			close(c);
			ok++;
		}
		close(fd);
	}
	printf("ok: %d connected, %d refused, via %s\n", ok, refused, how);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	CHECK(argc >= 3, "usage: %s MODE IP [poll|epoll]", argv[0]);
	const char *m = argv[1], *ip = argv[2], *how = argc > 3 ? argv[3] : "poll";
	int holder;
	if (!strcmp(m, "ok"))
		t_ok(ip, how);
	else if (!strcmp(m, "refused"))
		t_fail(ip, closed_port(ip, &holder), ECONNREFUSED, how);
	else if (!strcmp(m, "unreach"))
		t_fail(ip, 80, EHOSTUNREACH, how);
	else if (!strcmp(m, "again"))
		t_again(ip);
	else if (!strcmp(m, "stress"))
		t_stress(ip, argc > 4 ? atoi(argv[4]) : 200, how);
	else if (!strcmp(m, "again-fail"))
		t_again_fail(ip, 80, EHOSTUNREACH);
	else if (!strcmp(m, "again-refused")) {
		int holder;
		t_again_fail(ip, closed_port(ip, &holder), ECONNREFUSED);
	}
	else
		CHECK(0, "unknown mode %s", m);
	return 0;
}
