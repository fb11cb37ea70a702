/* The channel's UDP association request (op UDP, docs/CHANNEL.md), shared by the preload
 * (udp.c, on the program's fd) and the seccomp supervisor (exec/udproute.c, on the program's
 * socket taken with pidfd_getfd): for a socket and a destination the proxy routes, the node's
 * loopback endpoint to send to instead, tied to the address the socket's datagrams come from
 * (a socket not yet bound is bound first, wildcard and port 0, as the kernel would at its
 * first send). Calls libc only through the real_* pointers. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "tailproxy.h"
#include "wire.h"

typedef int (*getsockname_fn)(int, struct sockaddr *, socklen_t *);

#define UDP_WAIT_MS 10000
#define UDP_REQ_LEN (8 + 2 * 20)
#define UDP_REP_LEN (8 + 20)
#define PAYLOAD4 (1280 - 20 - 8)
#define PAYLOAD6 (1280 - 40 - 8)

int udp_payload_max(const struct tp_addr *dst)
{
	return dst->family == 4 ? PAYLOAD4 : PAYLOAD6;
}

int udp_domain(int fd)
{
	int type = sock_int(fd, SOL_SOCKET, SO_TYPE), proto, domain;

	if (type != SOCK_DGRAM)
		return 0;
	proto = sock_int(fd, SOL_SOCKET, SO_PROTOCOL);
	if (proto != 0 && proto != IPPROTO_UDP)
		return 0;
	domain = sock_int(fd, SOL_SOCKET, SO_DOMAIN);
	return domain == AF_INET || domain == AF_INET6 ? domain : 0;
}

/* The address the socket's datagrams to a loopback endpoint come from: its own if bound to
 * one, else loopback; binds an unbound socket first. 0, or -1 with errno. */
static int sending_address(int fd, int domain, struct tp_addr *pin)
{
	getsockname_fn gsn = TP_REAL(getsockname_fn, getsockname);
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	int mapped;
	static const uint8_t zero[16];

	if (!gsn) {
		errno = ENOSYS;
		return -1;
	}
	if (gsn(fd, (struct sockaddr *)&ss, &len) != 0)
		return -1;
	if (sa_to_tp((struct sockaddr *)&ss, len, pin, &mapped) != 0) {
		errno = EAFNOSUPPORT;
		return -1;
	}
	if (pin->port == 0) {
		memset(&ss, 0, sizeof(ss));
		ss.ss_family = (sa_family_t)domain;
		if (real_bind(fd, (struct sockaddr *)&ss, domain == AF_INET ?
			      sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6)) != 0)
			return -1;
		len = sizeof(ss);
		if (gsn(fd, (struct sockaddr *)&ss, &len) != 0 ||
		    sa_to_tp((struct sockaddr *)&ss, len, pin, &mapped) != 0 || pin->port == 0) {
			errno = EADDRNOTAVAIL;
			return -1;
		}
	}
	if (memcmp(pin->addr, zero, pin->family == 4 ? 4 : 16) == 0) {
		memset(pin->addr, 0, 16);
		if (domain == AF_INET) {
			pin->family = 4;
			pin->addr[0] = 127;
			pin->addr[3] = 1;
		} else {
			pin->family = 6;
			pin->addr[15] = 1;
		}
	}
	return 0;
}

static void put_addr(uint8_t *p, const struct tp_addr *a)
{
	p[0] = a->family;
	p[1] = 0;
	memcpy(p + 2, &a->port, 2);
	memcpy(p + 4, a->addr, 16);
}

int udp_assoc_ask(int fd, int domain, const struct tp_addr *dst, int *direct,
		  struct tp_addr *ep)
{
	uint8_t req[UDP_REQ_LEN], rep[UDP_REP_LEN];
	struct tp_addr pin;
	int32_t err;
	uint16_t port;

	if (sending_address(fd, domain, &pin) != 0)
		return -1;
	memset(req, 0, sizeof(req));
	put_addr(req + 8, dst);
	put_addr(req + 28, &pin);
	if (chan_request(OP_UDP, 0, req, sizeof(req), rep, sizeof(rep), UDP_WAIT_MS) !=
	    (int)sizeof(rep)) {
		if (errno != ENETDOWN && errno != ETIMEDOUT && errno != EINTR && errno != EMFILE &&
		    errno != ENFILE)
			errno = EPROTO;
		return -1;
	}
	memcpy(&err, rep + 4, 4);
	if (err != 0) {
		errno = err;
		return -1;
	}
	memset(ep, 0, sizeof(*ep));
	*direct = rep[8] == 0;
	if (*direct)
		return 0;
	if ((rep[8] != 4 && rep[8] != 6) || rep[9] != 0) {
		errno = EPROTO;
		return -1;
	}
	ep->family = rep[8];
	memcpy(&port, rep + 10, 2);
	ep->port = port;
	memcpy(ep->addr, rep + 12, 16);
	return 0;
}
