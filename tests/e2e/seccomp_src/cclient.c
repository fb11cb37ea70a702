/* A C test client for tailproxy's seccomp interception (tests/e2e/test_seccomp.py), built by
 * the test with `gcc -static` and as a dynamic program.
 *   cclient libc IP PORT MSG    connect() through libc, send MSG and a newline, print the reply
 *   cclient raw IP PORT MSG     the same with syscall(SYS_connect): no libc wrapper to hook
 *   cclient gai NAME PORT MSG   NAME resolved with getaddrinfo() (libc's own resolver, static
 *                               in a static build), then as libc, to the first address
 * IP is an IPv4 or IPv6 literal; the socket is blocking. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct sockaddr_storage ss;
	socklen_t len;
	char buf[512];
	ssize_t n, got = 0;
	int s, r;

	if (argc != 5) {
		fprintf(stderr, "usage: cclient libc|raw|gai IP|NAME PORT MSG\n");
		return 2;
	}
	memset(&ss, 0, sizeof(ss));
	if (strcmp(argv[1], "gai") == 0) {
		struct addrinfo hints, *ai;
		memset(&hints, 0, sizeof(hints));
		hints.ai_socktype = SOCK_STREAM;
		r = getaddrinfo(argv[2], argv[3], &hints, &ai);
		if (r != 0) {
			fprintf(stderr, "getaddrinfo %s: %s\n", argv[2], gai_strerror(r));
			return 1;
		}
		memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
		len = ai->ai_addrlen;
		freeaddrinfo(ai);
	} else if (inet_pton(AF_INET, argv[2], &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
		ss.ss_family = AF_INET;
		((struct sockaddr_in *)&ss)->sin_port = htons((unsigned short)atoi(argv[3]));
		len = sizeof(struct sockaddr_in);
	} else if (inet_pton(AF_INET6, argv[2], &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
		ss.ss_family = AF_INET6;
		((struct sockaddr_in6 *)&ss)->sin6_port = htons((unsigned short)atoi(argv[3]));
		len = sizeof(struct sockaddr_in6);
	} else {
		fprintf(stderr, "not an IP: %s\n", argv[2]);
		return 2;
	}
	s = socket(ss.ss_family, SOCK_STREAM, 0);
	if (strcmp(argv[1], "raw") == 0)
		r = (int)syscall(SYS_connect, s, (struct sockaddr *)&ss, len);
	else
		r = connect(s, (struct sockaddr *)&ss, len);
	if (r != 0) {
		fprintf(stderr, "connect: %s\n", strerror(errno));
		return 1;
	}
	snprintf(buf, sizeof(buf), "%s\n", argv[4]);
	if (write(s, buf, strlen(buf)) < 0) {
		fprintf(stderr, "write: %s\n", strerror(errno));
		return 1;
	}
	while (got < (ssize_t)sizeof(buf) - 1 && (n = read(s, buf + got, sizeof(buf) - 1 - got)) > 0) {
		got += n;
		if (memchr(buf, '\n', (size_t)got))
			break;
	}
	buf[got] = 0;
	printf("%s", buf);
	close(s);
	return got > 0 ? 0 : 1;
}
