/* Bytes through the relay.
 *   test_relay halfclose IP   client shutdown(SHUT_WR): server sees EOF, still answers
 *   test_relay banner IP      server speaks first, before the client sends anything
 *   test_relay bulk IP        1 MiB each way, checksummed
 */
#include "tptest.h"

static int connected(const char *ip, int *server)
{
	int port, lfd = listener(ip, 4, &port), fd = socket(family_of(ip), SOCK_STREAM, 0);
	struct sockaddr_storage ss;
	socklen_t len = mkaddr(ip, port, &ss);

	CHECK(connect(fd, (struct sockaddr *)&ss, len) == 0, "connect: %s", strerror(errno));
	CHECK(raw_peer_is_loopback(fd), "not relayed");
	*server = accept_timeout(lfd, 5000);
	close(lfd);
	return fd;
}

static void t_halfclose(const char *ip)
{
	int srv, fd = connected(ip, &srv);
	char buf[64];
	ssize_t n;

	write_all(fd, "request", 7);
	CHECK(shutdown(fd, SHUT_WR) == 0, "shutdown: %s", strerror(errno));
	read_all(srv, buf, 7);
	CHECK(memcmp(buf, "request", 7) == 0, "server got %.7s", buf);
	n = read(srv, buf, sizeof(buf));
	CHECK(n == 0, "server did not see EOF (%zd)", n);
	/* the other direction still works after the half-close */
	write_all(srv, "response", 8);
	close(srv);
	read_all(fd, buf, 8);
	CHECK(memcmp(buf, "response", 8) == 0, "client got %.8s", buf);
	n = read(fd, buf, sizeof(buf));
	CHECK(n == 0, "client did not see EOF (%zd)", n);
	printf("ok: half-close\n");
}

static void t_banner(const char *ip)
{
	int srv, fd = connected(ip, &srv);
	char buf[64];

	write_all(srv, "220 hello\r\n", 11);
	read_all(fd, buf, 11);
	CHECK(memcmp(buf, "220 hello\r\n", 11) == 0, "banner %.11s", buf);
	exchange(fd, srv);
	printf("ok: server-first banner\n");
}

static void t_bulk(const char *ip)
{
	enum { N = 1 << 20 };
	int srv, fd = connected(ip, &srv);
	static unsigned char out[N], in[N];
	size_t i, got = 0, sent = 0;

	for (i = 0; i < N; i++)
		out[i] = (unsigned char)(i * 131 + (i >> 8));
	set_nonblock(fd, 1);
	set_nonblock(srv, 1);
	/* client -> server, then server -> client, interleaved without deadlock */
	while (got < N) {
		if (sent < N) {
			ssize_t w = write(fd, out + sent, N - sent);
			if (w > 0)
				sent += (size_t)w;
		}
		ssize_t r = read(srv, in + got, N - got);
		if (r > 0)
			got += (size_t)r;
		else if (r == 0)
			CHECK(0, "EOF early");
		else
			poll(NULL, 0, 1);
	}
	CHECK(memcmp(in, out, N) == 0, "data differs");
	printf("ok: 1 MiB through the relay\n");
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	CHECK(argc >= 3, "usage");
	if (!strcmp(argv[1], "halfclose"))
		t_halfclose(argv[2]);
	else if (!strcmp(argv[1], "banner"))
		t_banner(argv[2]);
	else if (!strcmp(argv[1], "bulk"))
		t_bulk(argv[2]);
	else
		CHECK(0, "unknown mode %s", argv[1]);
	return 0;
}
