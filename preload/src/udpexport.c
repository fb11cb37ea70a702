/* Export mode (TAILPROXY_EXPORT_LISTENERS=1), UDP: a UDP socket bound to a fixed port is a
 * server (a client lets the kernel pick its port), so its bind() is held to loopback, as a TCP
 * listener's is (listen.c), and the exporter is told (LISTEN with FLAG_LISTEN_UDP); the node
 * then serves that port on the tailnet and forwards each peer's datagrams to it. A bind to port
 * 0 is left alone: such a socket may well send to the internet directly. The exporter ends the
 * export when the kernel no longer shows a UDP socket on the port (no close() notice here). */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "tailproxy.h"

#define LISTEN_LEN (8 + 8)

/* The same address on loopback (IPv4-mapped stays mapped); its port, or 0. */
static uint16_t held_to_loopback(const struct sockaddr *sa, socklen_t len,
				 struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	if (sa->sa_family == AF_INET && len >= sizeof(struct sockaddr_in))
		memcpy(ss, sa, sizeof(struct sockaddr_in));
	else if (sa->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6))
		memcpy(ss, sa, sizeof(struct sockaddr_in6));
	else
		return 0;
	addr_to_loopback(ss);
	return ntohs(ss->ss_family == AF_INET ? ((struct sockaddr_in *)ss)->sin_port
					      : ((struct sockaddr_in6 *)ss)->sin6_port);
}

int udp_export_bind(int fd, const struct sockaddr *sa, socklen_t len,
		    int (*real_bind)(int, const struct sockaddr *, socklen_t), int32_t pid, int *ret)
{
	struct sockaddr_storage ss;
	uint8_t req[LISTEN_LEN];
	uint16_t port;
	int e0 = errno, fam;

	if (!sa || len < sizeof(sa_family_t) ||
	    (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) || !(fam = inet_socket_family(fd, SOCK_DGRAM)))
		return 0;
	port = held_to_loopback(sa, len, &ss);
	if (port == 0) {
		errno = e0;
		return 0;
	}
	*ret = real_bind(fd, (struct sockaddr *)&ss, len);
	if (*ret != 0)
		return 1;
	memset(req, 0, sizeof(req));
	req[8] = fam == AF_INET ? 4 : 6;
	memcpy(req + 10, &port, 2);
	memcpy(req + 12, &pid, 4);
	chan_request(OP_LISTEN, FLAG_LISTEN_UDP, req, sizeof(req), NULL, 0, 0);  /* a notice */
	errno = e0;
	return 1;
}
