/* UDP through associations (udp.c), against tests/preload/udp_fake_node.py, which answers each
 * datagram itself with "via <dst>: " + the datagram from the association's loopback endpoint.
 *   test_udp sendto IP PORT      unconnected: the reply shows IP:PORT as its source; errno kept
 *   test_udp connected IP PORT   connect/send/recv/recvfrom/getpeername show IP:PORT
 *   test_udp msg IP PORT         sendmsg/recvmsg
 *   test_udp mmsg IP PORT        sendmmsg/recvmmsg, three datagrams
 *   test_udp truncated IP PORT   a short address buffer: truncated copy, full length
 *   test_udp nonblocking IP PORT EAGAIN first, then poll() wakes for the answer
 *   test_udp oversize IP PORT    one byte over the tailnet's payload: EMSGSIZE (sendto, send,
 *                                sendmsg on a connected socket); the largest crosses (under
 *                                tailproxy-exec, TPTEST_SECCOMP=1: sendto only; a connected
 *                                socket's send() is not trapped)
 *   test_udp refused IP PORT     the proxy's errno (EHOSTUNREACH) from sendto and connect
 *   test_udp ended IP            port 13: the fake ends the association after one answer: the
 *                                connected socket then gets ECONNREFUSED, as the kernel gives
 *                                for a port-unreachable peer
 *   test_udp direct IP           port 9: the proxy says "direct": the datagram goes to IP:9
 *                                (under tailproxy-exec the server's raw reply would be trapped
 *                                too: only the datagram's arrival from the socket is checked)
 */
#include "tptest.h"

static socklen_t dst_of(const char *ip, int port, struct sockaddr_storage *ss)
{
	return mkaddr(ip, port, ss);
}

/* "via [ip]:port: " as udp_fake_node.py writes it (IPv4-mapped shown as IPv4) */
static void via(const char *ip, int port, const char *msg, char *out, size_t n)
{
	const char *v4 = strncmp(ip, "::ffff:", 7) == 0 ? ip + 7 : ip;

	if (strchr(v4, ':'))
		snprintf(out, n, "via [%s]:%d: %s", v4, port, msg);
	else
		snprintf(out, n, "via %s:%d: %s", v4, port, msg);
}

static void expect_src(const struct sockaddr_storage *got, socklen_t len, const char *ip, int port)
{
	struct sockaddr_storage want;
	socklen_t wlen = mkaddr(ip, port, &want);
	char a[80], b[80];

	CHECK(len == wlen && memcmp(got, &want, wlen) == 0, "source %s (len %u), want %s",
	      fmt(got, a, sizeof(a)), len, fmt(&want, b, sizeof(b)));
}

static void expect_data(const char *buf, ssize_t n, const char *ip, int port, const char *msg)
{
	char want[256];

	via(ip, port, msg, want, sizeof(want));
	CHECK(n == (ssize_t)strlen(want) && memcmp(buf, want, n) == 0, "got %.*s, want %s",
	      (int)(n < 0 ? 0 : n), buf, want);
}

static void timeout_2s(int fd)
{
	struct timeval tv = {.tv_sec = 2};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

static void t_sendto(const char *ip, int port)
{
	struct sockaddr_storage dst, src;
	socklen_t dlen = dst_of(ip, port, &dst), slen = sizeof(src);
	int fd = socket(dst.ss_family, SOCK_DGRAM, 0);
	char buf[256];
	ssize_t n;

	timeout_2s(fd);
	errno = 777;
	CHECK(sendto(fd, "hello", 5, 0, (struct sockaddr *)&dst, dlen) == 5, "sendto: %s",
	      strerror(errno));
	CHECK(errno == 777, "sendto changed errno to %d", errno);
	n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&src, &slen);
	CHECK(errno == 777, "recvfrom changed errno to %d", errno);
	expect_data(buf, n, ip, port, "hello");
	expect_src(&src, slen, ip, port);
	/* a second datagram takes the remembered association */
	CHECK(sendto(fd, "again", 5, 0, (struct sockaddr *)&dst, dlen) == 5, "sendto: %s",
	      strerror(errno));
	slen = sizeof(src);
	n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&src, &slen);
	expect_data(buf, n, ip, port, "again");
	expect_src(&src, slen, ip, port);
	close(fd);
	printf("ok: sendto/recvfrom %s:%d\n", ip, port);
}

static void t_connected(const char *ip, int port)
{
	struct sockaddr_storage dst, src;
	socklen_t dlen = dst_of(ip, port, &dst), slen = sizeof(src);
	int fd = socket(dst.ss_family, SOCK_DGRAM, 0);
	char buf[256];
	ssize_t n;

	timeout_2s(fd);
	errno = 777;
	CHECK(connect(fd, (struct sockaddr *)&dst, dlen) == 0, "connect: %s", strerror(errno));
	CHECK(errno == 777, "connect changed errno to %d", errno);
	CHECK(raw_peer_is_loopback(fd), "not connected to a loopback endpoint");
	expect_peer(fd, ip, port);
	CHECK(errno == 777, "getpeername changed errno to %d", errno);
	CHECK(send(fd, "one", 3, 0) == 3, "send: %s", strerror(errno));
	n = recv(fd, buf, sizeof(buf), 0);
	expect_data(buf, n, ip, port, "one");
	CHECK(write(fd, "two", 3) == 3, "write: %s", strerror(errno));
	n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&src, &slen);
	expect_data(buf, n, ip, port, "two");
	expect_src(&src, slen, ip, port);
	close(fd);
	printf("ok: connected %s:%d\n", ip, port);
}

static void t_msg(const char *ip, int port)
{
	struct sockaddr_storage dst, src;
	socklen_t dlen = dst_of(ip, port, &dst);
	int fd = socket(dst.ss_family, SOCK_DGRAM, 0);
	char a[] = "by ", b[] = "sendmsg", buf[256];
	struct iovec iov[2] = {{a, 3}, {b, 7}}, riov = {buf, sizeof(buf)};
	struct msghdr m = {.msg_name = &dst, .msg_namelen = dlen, .msg_iov = iov, .msg_iovlen = 2};
	struct msghdr r = {.msg_name = &src, .msg_namelen = sizeof(src), .msg_iov = &riov,
			   .msg_iovlen = 1};
	ssize_t n;

	timeout_2s(fd);
	CHECK(sendmsg(fd, &m, 0) == 10, "sendmsg: %s", strerror(errno));
	n = recvmsg(fd, &r, 0);
	expect_data(buf, n, ip, port, "by sendmsg");
	expect_src(&src, r.msg_namelen, ip, port);
	close(fd);
	printf("ok: sendmsg/recvmsg %s:%d\n", ip, port);
}

static void t_mmsg(const char *ip, int port)
{
	struct sockaddr_storage dst, src[3];
	socklen_t dlen = dst_of(ip, port, &dst);
	int fd = socket(dst.ss_family, SOCK_DGRAM, 0), i, got = 0;
	char out[3][8] = {"m0", "m1", "m2"}, in[3][256];
	struct iovec siov[3], riov[3];
	struct mmsghdr sv[3], rv[3];

	timeout_2s(fd);
	memset(sv, 0, sizeof(sv));
	memset(rv, 0, sizeof(rv));
	for (i = 0; i < 3; i++) {
		siov[i] = (struct iovec){out[i], 2};
		sv[i].msg_hdr = (struct msghdr){.msg_name = &dst, .msg_namelen = dlen,
						.msg_iov = &siov[i], .msg_iovlen = 1};
		riov[i] = (struct iovec){in[i], sizeof(in[i])};
		rv[i].msg_hdr = (struct msghdr){.msg_name = &src[i], .msg_namelen = sizeof(src[i]),
						.msg_iov = &riov[i], .msg_iovlen = 1};
	}
	CHECK(sendmmsg(fd, sv, 3, 0) == 3, "sendmmsg: %s", strerror(errno));
	while (got < 3) {
		int r = recvmmsg(fd, rv + got, 3 - got, 0, NULL);
		CHECK(r > 0, "recvmmsg: %s", strerror(errno));
		got += r;
	}
	for (i = 0; i < 3; i++) {
		expect_data(in[i], rv[i].msg_len, ip, port, out[i]);     /* in order */
		expect_src(&src[i], rv[i].msg_hdr.msg_namelen, ip, port);
	}
	close(fd);
	printf("ok: sendmmsg/recvmmsg %s:%d\n", ip, port);
}

static void t_truncated(const char *ip, int port)
{
	struct sockaddr_storage dst, src, want;
	socklen_t dlen = dst_of(ip, port, &dst), slen = 4, wlen = mkaddr(ip, port, &want);
	int fd = socket(dst.ss_family, SOCK_DGRAM, 0);
	char buf[256];

	timeout_2s(fd);
	memset(&src, 0xAA, sizeof(src));
	CHECK(sendto(fd, "t", 1, 0, (struct sockaddr *)&dst, dlen) == 1, "sendto: %s",
	      strerror(errno));
	CHECK(recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&src, &slen) > 0, "recvfrom: %s",
	      strerror(errno));
	CHECK(slen == wlen, "length %u, want %u", slen, wlen);
	CHECK(memcmp(&src, &want, 4) == 0, "truncated copy differs");
	CHECK(((unsigned char *)&src)[4] == 0xAA, "wrote past the caller's 4 bytes");
	close(fd);
	printf("ok: truncated source %s:%d\n", ip, port);
}

static void t_nonblocking(const char *ip, int port)
{
	struct sockaddr_storage dst, src;
	socklen_t dlen = dst_of(ip, port, &dst), slen = sizeof(src);
	int fd = socket(dst.ss_family, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	struct pollfd p = {.fd = fd, .events = POLLIN};
	char buf[256];
	ssize_t n;

	CHECK_ERRNO((int)recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&src, &slen), EAGAIN);
	CHECK(sendto(fd, "nb", 2, 0, (struct sockaddr *)&dst, dlen) == 2, "sendto: %s",
	      strerror(errno));
	CHECK(poll(&p, 1, 2000) == 1 && (p.revents & POLLIN), "poll: no answer");
	slen = sizeof(src);
	n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&src, &slen);
	expect_data(buf, n, ip, port, "nb");
	expect_src(&src, slen, ip, port);
	close(fd);
	printf("ok: non-blocking %s:%d\n", ip, port);
}

static void t_oversize(const char *ip, int port)
{
	struct sockaddr_storage dst;
	socklen_t dlen = dst_of(ip, port, &dst);
	int v4 = strchr(ip, ':') == NULL || strncmp(ip, "::ffff:", 7) == 0;
	size_t limit = v4 ? 1252 : 1232;
	int fd = socket(dst.ss_family, SOCK_DGRAM, 0);
	static char big[2000], buf[2100];
	struct iovec iov = {big, limit + 1};
	struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
	ssize_t n;

	timeout_2s(fd);
	memset(big, 'B', sizeof(big));
	CHECK_ERRNO((int)sendto(fd, big, limit + 1, 0, (struct sockaddr *)&dst, dlen), EMSGSIZE);
	CHECK(sendto(fd, big, limit, 0, (struct sockaddr *)&dst, dlen) == (ssize_t)limit,
	      "sendto %zu bytes: %s", limit, strerror(errno));
	n = recv(fd, buf, sizeof(buf), 0);
	CHECK(n > (ssize_t)limit, "the largest datagram did not cross: %zd", n);
	if (getenv("TPTEST_SECCOMP")) {
		close(fd);
		printf("ok: oversize %s:%d (limit %zu, unconnected)\n", ip, port, limit);
		return;
	}
	CHECK(connect(fd, (struct sockaddr *)&dst, dlen) == 0, "connect: %s", strerror(errno));
	CHECK_ERRNO((int)send(fd, big, limit + 1, 0), EMSGSIZE);
	CHECK_ERRNO((int)sendmsg(fd, &m, 0), EMSGSIZE);
	CHECK_ERRNO((int)sendto(fd, big, limit + 1, 0, NULL, 0), EMSGSIZE);
	CHECK(send(fd, "small", 5, 0) == 5, "send after EMSGSIZE: %s", strerror(errno));
	close(fd);
	printf("ok: oversize %s:%d (limit %zu)\n", ip, port, limit);
}

static void t_refused(const char *ip, int port)
{
	struct sockaddr_storage dst;
	socklen_t dlen = dst_of(ip, port, &dst);
	int fd = socket(dst.ss_family, SOCK_DGRAM, 0);

	CHECK_ERRNO((int)sendto(fd, "x", 1, 0, (struct sockaddr *)&dst, dlen), EHOSTUNREACH);
	CHECK_ERRNO(connect(fd, (struct sockaddr *)&dst, dlen), EHOSTUNREACH);
	close(fd);
	printf("ok: refused %s:%d\n", ip, port);
}

static void t_direct(const char *ip)
{
	struct sockaddr_storage dst, src, from;
	socklen_t dlen = dst_of(ip, 9, &dst), slen = sizeof(src), flen = sizeof(from);
	int srv = socket(dst.ss_family, SOCK_DGRAM, 0), fd = socket(dst.ss_family, SOCK_DGRAM, 0);
	char buf[64];
	ssize_t n;

	timeout_2s(srv);
	timeout_2s(fd);
	CHECK(bind(srv, (struct sockaddr *)&dst, dlen) == 0, "bind %s:9: %s", ip, strerror(errno));
	CHECK(sendto(fd, "direct", 6, 0, (struct sockaddr *)&dst, dlen) == 6, "sendto: %s",
	      strerror(errno));
	n = recvfrom(srv, buf, sizeof(buf), 0, (struct sockaddr *)&from, &flen);
	CHECK(n == 6 && memcmp(buf, "direct", 6) == 0, "the server got %zd bytes", n);
	if (getenv("TPTEST_SECCOMP")) {
		struct sockaddr_storage mine;
		socklen_t mlen = sizeof(mine);

		CHECK(getsockname(fd, (struct sockaddr *)&mine, &mlen) == 0 &&
		      ((struct sockaddr_in *)&mine)->sin_port == ((struct sockaddr_in *)&from)->sin_port,
		      "the datagram did not come from the program's socket");
		close(fd);
		close(srv);
		printf("ok: direct %s:9 (from the program's socket)\n", ip);
		return;
	}
	/* the server's reply past the hooks: in this process it would be routed too */
	CHECK(syscall(SYS_sendto, srv, "back", 4, 0, (struct sockaddr *)&from, flen) == 4,
	      "reply: %s", strerror(errno));
	n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&src, &slen);
	CHECK(n == 4 && memcmp(buf, "back", 4) == 0, "the client got %zd bytes", n);
	expect_src(&src, slen, ip, 9);
	close(fd);
	close(srv);
	printf("ok: direct %s:9\n", ip);
}

static void t_ended(const char *ip)
{
	struct sockaddr_storage dst;
	socklen_t dlen = dst_of(ip, 13, &dst);
	int fd = socket(dst.ss_family, SOCK_DGRAM, 0), i, refused = 0;
	char buf[256];
	ssize_t n;

	timeout_2s(fd);
	CHECK(connect(fd, (struct sockaddr *)&dst, dlen) == 0, "connect: %s", strerror(errno));
	CHECK(send(fd, "once", 4, 0) == 4, "send: %s", strerror(errno));
	n = recv(fd, buf, sizeof(buf), 0);
	expect_data(buf, n, ip, 13, "once");
	/* the endpoint is gone now (a datagram that raced its closing is lost: EAGAIN, try
	 * again): the next one draws a port unreachable from loopback, reported on this send or
	 * the receive after it */
	for (i = 0; i < 3 && !refused; i++) {
		if (send(fd, "again", 5, 0) < 0 || recv(fd, buf, sizeof(buf), 0) < 0) {
			if (errno == EAGAIN)
				continue;
			CHECK(errno == ECONNREFUSED, "errno %d (%s), want ECONNREFUSED", errno,
			      strerror(errno));
			refused = 1;
		}
	}
	CHECK(refused, "no ECONNREFUSED after the association ended");
	close(fd);
	printf("ok: ended %s:13\n", ip);
}

int main(int argc, char **argv)
{
	const char *cmd = argc > 1 ? argv[1] : "";
	const char *ip = argc > 2 ? argv[2] : "198.18.0.1";
	int port = argc > 3 ? atoi(argv[3]) : 7;

	if (!strcmp(cmd, "sendto"))
		t_sendto(ip, port);
	else if (!strcmp(cmd, "connected"))
		t_connected(ip, port);
	else if (!strcmp(cmd, "msg"))
		t_msg(ip, port);
	else if (!strcmp(cmd, "mmsg"))
		t_mmsg(ip, port);
	else if (!strcmp(cmd, "truncated"))
		t_truncated(ip, port);
	else if (!strcmp(cmd, "nonblocking"))
		t_nonblocking(ip, port);
	else if (!strcmp(cmd, "oversize"))
		t_oversize(ip, port);
	else if (!strcmp(cmd, "refused"))
		t_refused(ip, port);
	else if (!strcmp(cmd, "direct"))
		t_direct(ip);
	else if (!strcmp(cmd, "ended"))
		t_ended(ip);
	else {
		fprintf(stderr, "usage: test_udp sendto|connected|msg|mmsg|truncated|nonblocking|"
				"oversize|refused|direct|ended IP [PORT]\n");
		return 2;
	}
	return 0;
}
