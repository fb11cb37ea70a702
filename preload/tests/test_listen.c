/* Export mode hooks: bind() held to loopback, listen() on an unbound socket binds loopback,
 * other sockets untouched, errno kept. Subcommands: v4 v6 mapped unbound port0 udp udpserver
 * off close */
#include "tptest.h"

static void name_of(int fd, char *buf, size_t n, int *port)
{
	struct sockaddr_storage ss;
	socklen_t l = sizeof(ss);

	CHECK(getsockname(fd, (struct sockaddr *)&ss, &l) == 0, "getsockname: %s", strerror(errno));
	if (ss.ss_family == AF_INET) {
		inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, buf, n);
		*port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
	} else {
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, buf, n);
		*port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	}
}

static int bound(int fam, const char *addr, int type, int port)
{
	int fd = socket(fam, type, 0), one = 1;
	struct sockaddr_storage ss;
	socklen_t len;

	CHECK(fd >= 0, "socket");
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	memset(&ss, 0, sizeof(ss));
	if (fam == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)&ss;
		in->sin_family = AF_INET;
		in->sin_port = htons(port);
		inet_pton(AF_INET, addr, &in->sin_addr);
		len = sizeof(*in);
	} else {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(port);
		inet_pton(AF_INET6, addr, &in6->sin6_addr);
		len = sizeof(*in6);
	}
	errno = 1234;
	CHECK(bind(fd, (struct sockaddr *)&ss, len) == 0, "bind %s: %s", addr, strerror(errno));
	CHECK(errno == 1234, "errno changed by a successful bind: %d", errno);
	return fd;
}

int main(int argc, char **argv)
{
	char a[64];
	int port, fd;
	const char *what = argc > 1 ? argv[1] : "";
	int want_port = argc > 2 ? atoi(argv[2]) : 0;

	if (!strcmp(what, "v4") || !strcmp(what, "off")) {
		fd = bound(AF_INET, "0.0.0.0", SOCK_STREAM, want_port);
		CHECK(listen(fd, 8) == 0, "listen");
		name_of(fd, a, sizeof(a), &port);
		CHECK(!strcmp(a, !strcmp(what, "v4") ? "127.0.0.1" : "0.0.0.0"), "bound to %s", a);
	} else if (!strcmp(what, "v6")) {
		fd = bound(AF_INET6, "::", SOCK_STREAM, want_port);
		CHECK(listen(fd, 8) == 0, "listen");
		name_of(fd, a, sizeof(a), &port);
		CHECK(!strcmp(a, "::1"), "bound to %s", a);
	} else if (!strcmp(what, "mapped")) {
		fd = bound(AF_INET6, "::ffff:0.0.0.0", SOCK_STREAM, want_port);
		CHECK(listen(fd, 8) == 0, "listen");
		name_of(fd, a, sizeof(a), &port);
		CHECK(!strcmp(a, "::ffff:127.0.0.1"), "bound to %s", a);
	} else if (!strcmp(what, "unbound")) {
		fd = socket(AF_INET, SOCK_STREAM, 0);
		errno = 77;
		CHECK(listen(fd, 8) == 0, "listen: %s", strerror(errno));
		CHECK(errno == 77, "errno changed by a successful listen: %d", errno);
		name_of(fd, a, sizeof(a), &port);
		CHECK(!strcmp(a, "127.0.0.1") && port != 0, "unbound listen gave %s:%d", a, port);
	} else if (!strcmp(what, "udp")) {
		fd = bound(AF_INET, "0.0.0.0", SOCK_DGRAM, 0);
		name_of(fd, a, sizeof(a), &port);
		CHECK(!strcmp(a, "0.0.0.0"), "UDP socket was moved to %s", a);
	} else if (!strcmp(what, "udpserver")) {      /* a fixed port: held to loopback, LISTEN udp */
		fd = bound(AF_INET, "0.0.0.0", SOCK_DGRAM, want_port);    /* errno kept: bound() */
		name_of(fd, a, sizeof(a), &port);
		CHECK(!strcmp(a, "127.0.0.1"), "UDP server socket at %s, not loopback", a);
	} else if (!strcmp(what, "badfd")) {
		CHECK_ERRNO(listen(987, 1), EBADF);
		CHECK_ERRNO(close(987), EBADF);
		return 0;
	} else {
		fprintf(stderr, "usage: test_listen v4|v6|mapped|unbound|udp|off|badfd [port]\n");
		return 2;
	}
	printf("port %d\n", port);
	fflush(stdout);
	CHECK(close(fd) == 0, "close");
	return 0;
}
