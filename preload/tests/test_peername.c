/* getpeername() on relayed sockets.
 *   test_peername requested IP       the address asked for, not the relay's
 *   test_peername truncated IP       short buffer: truncated copy, full length
 *   test_peername dup IP             a dup'd fd (no table entry): asks the proxy
 *   test_peername stale IP           fd number reused by a direct socket: no stale answer
 *   test_peername exec IP            after exec (table gone): asks the proxy
 *   test_peername loopback           a direct loopback connection: the kernel's answer
 */
#include "tptest.h"

static int proxied(const char *ip, int *lfd, int *port, int *server)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int fd = socket(family_of(ip), SOCK_STREAM, 0);

	*lfd = listener(ip, 16, port);
	len = mkaddr(ip, *port, &ss);
	CHECK(connect(fd, (struct sockaddr *)&ss, len) == 0, "connect: %s", strerror(errno));
	CHECK(raw_peer_is_loopback(fd), "socket is not relayed by the proxy");
	*server = accept_timeout(*lfd, 5000);
	return fd;
}

static void t_requested(const char *ip)
{
	int lfd, port, srv, fd = proxied(ip, &lfd, &port, &srv);

	errno = 777;
	expect_peer(fd, ip, port);
	CHECK(errno == 777, "errno changed on success");
	exchange(fd, srv);
	expect_peer(fd, ip, port);
	printf("ok: getpeername %s:%d\n", ip, port);
}

static void t_truncated(const char *ip)
{
	int lfd, port, srv, fd = proxied(ip, &lfd, &port, &srv);
	struct sockaddr_storage want;
	socklen_t wlen = mkaddr(ip, port, &want);
	unsigned char buf[64];
	socklen_t len = 6;

	memset(buf, 0xAA, sizeof(buf));
	CHECK(getpeername(fd, (struct sockaddr *)buf, &len) == 0, "getpeername: %s",
	      strerror(errno));
	CHECK(len == wlen, "len %u, want %u", len, wlen);
	CHECK(memcmp(buf, &want, 6) == 0, "truncated copy differs");
	CHECK(buf[6] == 0xAA, "wrote past the given length");
	printf("ok: truncated\n");
}

static void t_dup(const char *ip)
{
	int lfd, port, srv, fd = proxied(ip, &lfd, &port, &srv), d;

	d = fcntl(fd, F_DUPFD_CLOEXEC, 100);
	CHECK(d >= 100, "dup");
	expect_peer(d, ip, port);
	close(fd);
	expect_peer(d, ip, port);
	printf("ok: dup'd fd %d\n", d);
}

/* A direct loopback connection from 127.0.0.2: its local address can be no
 * relayed socket's (those are 127.0.0.1 or ::1), so the proxy cannot know it. */
static int direct_loopback(int *server)
{
	int lo_port, lo_lfd = listener("127.0.0.1", 4, &lo_port), d = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_storage ss;
	socklen_t len = mkaddr("127.0.0.2", 0, &ss);

	CHECK(bind(d, (struct sockaddr *)&ss, len) == 0, "bind 127.0.0.2: %s", strerror(errno));
	len = mkaddr("127.0.0.1", lo_port, &ss);
	CHECK(connect(d, (struct sockaddr *)&ss, len) == 0, "connect loopback");
	*server = accept_timeout(lo_lfd, 2000);
	close(lo_lfd);
	return d;
}

static void expect_loopback_peer(int fd)
{
	struct sockaddr_storage peer, raw;
	socklen_t len = sizeof(peer);
	char a[80], b[80];

	CHECK(getpeername(fd, (struct sockaddr *)&peer, &len) == 0, "getpeername");
	CHECK(raw_peer(fd, &raw) == 0 && memcmp(&peer, &raw, len) == 0,
	      "stale answer %s, the kernel says %s", fmt(&peer, a, sizeof(a)), fmt(&raw, b, sizeof(b)));
}

static void t_stale(const char *ip)
{
	int lfd, port, srv, fd = proxied(ip, &lfd, &port, &srv), d, c;

	expect_peer(fd, ip, port);
	/* the fd number reused by dup2 for a direct connection */
	d = direct_loopback(&c);
	CHECK(dup2(d, fd) == fd, "dup2");
	close(d);
	expect_loopback_peer(fd);
	close(c);
	/* and back again: a relayed socket on that number is ours again */
	d = proxied(ip, &lfd, &port, &srv);
	CHECK(dup2(d, fd) == fd, "dup2");
	close(d);
	expect_peer(fd, ip, port);
	printf("ok: reused fd not confused\n");
}

static void t_exec(const char *ip, char *self)
{
	int lfd, port, srv, fd = proxied(ip, &lfd, &port, &srv);
	char sfd[16], sport[16];

	snprintf(sfd, sizeof(sfd), "%d", fd);
	snprintf(sport, sizeof(sport), "%d", port);
	fcntl(fd, F_SETFD, 0);     /* keep it across exec */
	execl(self, self, "exec-child", ip, sfd, sport, (char *)NULL);
	CHECK(0, "exec: %s", strerror(errno));
}

static void t_exec_child(const char *ip, int fd, int port)
{
	expect_peer(fd, ip, port);
	printf("ok: after exec\n");
}

static void t_loopback(void)
{
	int port, lfd = listener("127.0.0.1", 4, &port), fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_storage ss;
	socklen_t len = mkaddr("127.0.0.1", port, &ss);

	CHECK(connect(fd, (struct sockaddr *)&ss, len) == 0, "connect loopback");
	expect_peer(fd, "127.0.0.1", port);
	(void)lfd;
	printf("ok: loopback untouched\n");
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	CHECK(argc >= 2, "usage");
	const char *m = argv[1], *ip = argc > 2 ? argv[2] : "";
	if (!strcmp(m, "requested"))
		t_requested(ip);
	else if (!strcmp(m, "truncated"))
		t_truncated(ip);
	else if (!strcmp(m, "dup"))
		t_dup(ip);
	else if (!strcmp(m, "stale"))
		t_stale(ip);
	else if (!strcmp(m, "exec"))
		t_exec(ip, argv[0]);
	else if (!strcmp(m, "exec-child"))
		t_exec_child(ip, atoi(argv[3]), atoi(argv[4]));
	else if (!strcmp(m, "loopback"))
		t_loopback();
	else
		CHECK(0, "unknown mode %s", m);
	return 0;
}
