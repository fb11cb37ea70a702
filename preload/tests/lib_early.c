/* A library whose constructor connects (through the proxy) before the main
 * program runs, maybe before libtailproxy's own constructor: the hooks must
 * resolve the real calls lazily. Loaded with LD_PRELOAD next to the library;
 * TP_EARLY_IP names the destination (acted on in test_connect only). Prints "early: ok" or exits 1. */
#include "tptest.h"

__attribute__((constructor)) static void early(void)
{
	const char *ip = getenv("TP_EARLY_IP");
	struct sockaddr_storage ss;
	socklen_t len;
	int port, lfd, fd, c;

	/* only in the test program, not in nsenter/valgrind that start it */
	if (!ip || strcmp(program_invocation_short_name, "test_connect") != 0)
		return;
	lfd = listener(ip, 4, &port);
	len = mkaddr(ip, port, &ss);
	fd = socket(family_of(ip), SOCK_STREAM, 0);
	CHECK(connect(fd, (struct sockaddr *)&ss, len) == 0, "early connect: %s", strerror(errno));
	CHECK(raw_peer_is_loopback(fd), "early connect not relayed");
	expect_peer(fd, ip, port);
	c = accept_timeout(lfd, 5000);
	exchange(fd, c);
	close(c);
	close(fd);
	close(lfd);
	printf("early: ok\n");
}
