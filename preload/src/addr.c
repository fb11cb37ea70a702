/* Small helpers shared by the hooks: address conversion, TCP state, clock. */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "tailproxy.h"

static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* IPv4-mapped IPv6 destinations become IPv4, so bypass rules and the proxy
 * see one form. Returns -1 for anything that is not a usable IP endpoint. */
int sa_to_tp(const struct sockaddr *sa, socklen_t len, struct tp_addr *a, int *mapped)
{
	memset(a, 0, sizeof(*a));
	*mapped = 0;
	if (!sa || len < sizeof(sa_family_t))
		return -1;
	if (sa->sa_family == AF_INET) {
		struct sockaddr_in sin;
		if (len < sizeof(sin))
			return -1;
		memcpy(&sin, sa, sizeof(sin));
		a->family = 4;
		a->port = ntohs(sin.sin_port);
		memcpy(a->addr, &sin.sin_addr, 4);
		return 0;
	}
	if (sa->sa_family == AF_INET6) {
		struct sockaddr_in6 sin6;
		if (len < 24)            /* SIN6_LEN_RFC2133, the kernel's minimum */
			return -1;
		memset(&sin6, 0, sizeof(sin6));
		memcpy(&sin6, sa, len < sizeof(sin6) ? len : sizeof(sin6));
		a->port = ntohs(sin6.sin6_port);
		if (memcmp(sin6.sin6_addr.s6_addr, v4mapped, 12) == 0) {
			a->family = 4;
			memcpy(a->addr, sin6.sin6_addr.s6_addr + 12, 4);
			*mapped = 1;
		} else {
			a->family = 6;
			memcpy(a->addr, sin6.sin6_addr.s6_addr, 16);
		}
		return 0;
	}
	return -1;
}

socklen_t tp_to_sa(const struct tp_addr *a, int sock_family, int mapped,
		   struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	if (sock_family == AF_INET && a->family == 4) {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;
		sin->sin_family = AF_INET;
		sin->sin_port = htons(a->port);
		memcpy(&sin->sin_addr, a->addr, 4);
		return sizeof(*sin);
	}
	if (sock_family == AF_INET6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(a->port);
		if (a->family == 4) {   /* an AF_INET6 socket only reaches IPv4 mapped */
			memcpy(sin6->sin6_addr.s6_addr, v4mapped, 12);
			memcpy(sin6->sin6_addr.s6_addr + 12, a->addr, 4);
		} else {
			memcpy(sin6->sin6_addr.s6_addr, a->addr, 16);
		}
		return sizeof(*sin6);
	}
	(void)mapped;
	return 0;
}

int tcp_state(int fd)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	int e = errno;

	memset(&ti, 0, sizeof(ti));
	if (real_getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0 || len < 1) {
		errno = e;
		return -1;
	}
	return ti.tcpi_state;
}

uint16_t local_port(int fd, struct tp_addr *local)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	struct tp_addr a;
	int mapped, e = errno;

	if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0 ||
	    sa_to_tp((struct sockaddr *)&ss, len, &a, &mapped) != 0) {
		errno = e;
		return 0;
	}
	if (local)
		*local = a;
	return a.port;
}

int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int so_error_of(int fd)
{
	int v = 0;
	socklen_t len = sizeof(v);

	if (real_getsockopt(fd, SOL_SOCKET, SO_ERROR, &v, &len) != 0)
		return 0;
	return v;
}

int sock_int(int fd, int level, int name)
{
	int v = -1;
	socklen_t len = sizeof(v);

	if (real_getsockopt(fd, level, name, &v, &len) != 0)
		return -1;
	return v;
}

int tcp_socket_of(int fd, int family, int mapped, int *domain)
{
	if (sock_int(fd, SOL_SOCKET, SO_TYPE) != SOCK_STREAM)
		return 0;
	*domain = sock_int(fd, SOL_SOCKET, SO_DOMAIN);
	if (*domain != family || sock_int(fd, SOL_SOCKET, SO_PROTOCOL) != IPPROTO_TCP)
		return 0;
	if (mapped && sock_int(fd, IPPROTO_IPV6, IPV6_V6ONLY) != 0)
		return 0;
	return 1;
}

int send_timeout_ms(int fd)
{
	struct timeval tv;
	socklen_t len = sizeof(tv);

	if (real_getsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, &len) != 0 ||
	    (tv.tv_sec == 0 && tv.tv_usec == 0))
		return -1;
	if (tv.tv_sec > 2000000)
		return 2000000000;
	return (int)(tv.tv_sec * 1000 + (tv.tv_usec + 999) / 1000);
}

int inet_socket_family(int fd, int type)
{
	int dom;

	if (sock_int(fd, SOL_SOCKET, SO_TYPE) != type)
		return 0;
	dom = sock_int(fd, SOL_SOCKET, SO_DOMAIN);
	return dom == AF_INET || dom == AF_INET6 ? dom : 0;
}

int addr_to_loopback(struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)ss;
		if ((ntohl(in->sin_addr.s_addr) >> 24) == 127)
			return 0;
		in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		return 1;
	}
	if (ss->ss_family == AF_INET6) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
		uint8_t *a = in6->sin6_addr.s6_addr;
		if (!memcmp(a, v4mapped, 12)) {
			if (a[12] == 127)
				return 0;
			a[12] = 127, a[13] = 0, a[14] = 0, a[15] = 1;
			return 1;
		}
		if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
			return 0;
		in6->sin6_addr = in6addr_loopback;
		in6->sin6_scope_id = 0;
		return 1;
	}
	return 0;
}
