/* A C UDP test client for tailproxy's seccomp interception (tests/e2e/test_seccomp_udp.py),
 * built by the test with `gcc -static` (and musl's). Each mode prints one line:
 *   cudp sendto HOST PORT MSG   unconnected: sendto(), recvfrom(): "REPLY from IP PORT"
 *   cudp connect HOST PORT MSG  connect(), send(), recv(), getpeername(): "REPLY peer IP PORT"
 *   cudp msg HOST PORT MSG      unconnected: sendmsg() (two buffers), recvmsg():
 *                               "REPLY from IP PORT"
 *   cudp mmsg HOST PORT MSG     unconnected: sendmmsg() of MSG-1, MSG-2, MSG-3, recvmmsg()
 *                               until all three came back: "R1,R2,R3 from IP PORT" (sorted)
 * HOST: an IP literal or a name (getaddrinfo(), the libc's own resolver in a static build).
 * Replies are awaited 10 s, sending again every second. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static struct sockaddr_storage to;
static socklen_t tolen;

static void show(const struct sockaddr_storage *ss, char *out, size_t cap)
{
	char ip[INET6_ADDRSTRLEN] = "?";
	int port = 0;

	if (ss->ss_family == AF_INET) {
		inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, ip, sizeof(ip));
		port = ntohs(((const struct sockaddr_in *)ss)->sin_port);
	} else if (ss->ss_family == AF_INET6) {
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, ip, sizeof(ip));
		port = ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
	}
	snprintf(out, cap, "%s %d", ip, port);
}

static int send_all(int s, const char *mode, const char *msg)
{
	if (strcmp(mode, "sendto") == 0)
		return sendto(s, msg, strlen(msg), 0, (struct sockaddr *)&to, tolen) < 0 ? -1 : 0;
	if (strcmp(mode, "connect") == 0)
		return send(s, msg, strlen(msg), 0) < 0 ? -1 : 0;
	if (strcmp(mode, "msg") == 0) {
		size_t half = strlen(msg) / 2;
		struct iovec iov[2] = {{(void *)msg, half}, {(void *)(msg + half), strlen(msg) - half}};
		struct msghdr mh = {.msg_name = &to, .msg_namelen = tolen, .msg_iov = iov,
				    .msg_iovlen = 2};
		return sendmsg(s, &mh, 0) < 0 ? -1 : 0;
	}
	{
		static char text[3][256];
		struct iovec iov[3];
		struct mmsghdr mm[3];
		int i;

		memset(mm, 0, sizeof(mm));
		for (i = 0; i < 3; i++) {
			snprintf(text[i], sizeof(text[i]), "%s-%d", msg, i + 1);
			iov[i].iov_base = text[i];
			iov[i].iov_len = strlen(text[i]);
			mm[i].msg_hdr.msg_name = &to;
			mm[i].msg_hdr.msg_namelen = tolen;
			mm[i].msg_hdr.msg_iov = &iov[i];
			mm[i].msg_hdr.msg_iovlen = 1;
		}
		for (i = 0; i < 3;) {
			int n = sendmmsg(s, mm + i, 3 - i, 0);
			if (n <= 0)
				return -1;
			i += n;
		}
		return 0;
	}
}

static int cmp(const void *a, const void *b)
{
	return strcmp((const char *)a, (const char *)b);
}

int main(int argc, char **argv)
{
	struct addrinfo hints, *ai;
	struct sockaddr_storage from;
	socklen_t fromlen = sizeof(from);
	struct timeval tv = {1, 0};
	char got[3][512], where[80];
	const char *mode;
	int s, r, tries, have = 0, want;
	ssize_t n = -1;

	if (argc != 5) {
		fprintf(stderr, "usage: cudp sendto|connect|msg|mmsg HOST PORT MSG\n");
		return 2;
	}
	mode = argv[1];
	want = strcmp(mode, "mmsg") == 0 ? 3 : 1;
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_DGRAM;
	r = getaddrinfo(argv[2], argv[3], &hints, &ai);
	if (r != 0) {
		fprintf(stderr, "getaddrinfo %s: %s\n", argv[2], gai_strerror(r));
		return 1;
	}
	memcpy(&to, ai->ai_addr, ai->ai_addrlen);
	tolen = ai->ai_addrlen;
	freeaddrinfo(ai);
	s = socket(to.ss_family, SOCK_DGRAM, 0);
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (strcmp(mode, "connect") == 0 && connect(s, (struct sockaddr *)&to, tolen) != 0) {
		fprintf(stderr, "connect: %s\n", strerror(errno));
		return 1;
	}
	for (tries = 0; tries < 10 && have < want; tries++) {
		if (send_all(s, mode, argv[4]) != 0) {
			fprintf(stderr, "send (%s): %s\n", mode, strerror(errno));
			return 1;
		}
		for (have = 0; have < want; have++) {
			char buf[512];

			memset(&from, 0, sizeof(from));
			fromlen = sizeof(from);
			if (strcmp(mode, "sendto") == 0) {
				n = recvfrom(s, buf, sizeof(buf) - 1, 0, (struct sockaddr *)&from, &fromlen);
			} else if (strcmp(mode, "connect") == 0) {
				n = recv(s, buf, sizeof(buf) - 1, 0);
				if (n >= 0 && getpeername(s, (struct sockaddr *)&from, &fromlen) != 0)
					n = -1;
			} else {
				struct iovec iov = {buf, sizeof(buf) - 1};
				struct mmsghdr mm = {.msg_hdr = {.msg_name = &from, .msg_namelen = fromlen,
								 .msg_iov = &iov, .msg_iovlen = 1}};
				if (strcmp(mode, "msg") == 0) {
					n = recvmsg(s, &mm.msg_hdr, 0);
				} else {
					n = recvmmsg(s, &mm, 1, 0, NULL);
					n = n == 1 ? (ssize_t)mm.msg_len : -1;
				}
			}
			if (n < 0)
				break;
			buf[n] = 0;
			snprintf(got[have], sizeof(got[have]), "%s", buf);
		}
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
			fprintf(stderr, "receive (%s): %s\n", mode, strerror(errno));
			return 1;
		}
	}
	if (have < want) {
		fprintf(stderr, "no reply in 10 s\n");
		return 1;
	}
	qsort(got, (size_t)want, sizeof(got[0]), cmp);
	show(&from, where, sizeof(where));
	if (want == 3)
		printf("%s,%s,%s from %s\n", got[0], got[1], got[2], where);
	else
		printf("%s %s %s\n", got[0], strcmp(mode, "connect") == 0 ? "peer" : "from", where);
	close(s);
	return 0;
}
