/* Export mode (TAILPROXY_EXPORT_LISTENERS=1): the program's TCP servers are held to loopback
 * and the exporter is told about each listening port, which the node then serves on the
 * tailnet. bind() to a non-loopback address is rewritten to 127.0.0.1 / ::1 (same port);
 * listen() on an unbound socket binds it to loopback first (the kernel would pick 0.0.0.0);
 * after listen() succeeds the port goes to the exporter (LISTEN); close() of a listening
 * socket sends UNLISTEN so the exporter checks at once (it trusts only the kernel's view). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tailproxy.h"

static int export_mode(void)
{
	static int state;          /* 0 unread, 1 off, 2 on; racing readers agree */
	int s = __atomic_load_n(&state, __ATOMIC_RELAXED);

	if (!s) {
		const char *v = getenv("TAILPROXY_EXPORT_LISTENERS");
		s = (v && v[0] == '1' && tp_config()->active) ? 2 : 1;
		__atomic_store_n(&state, s, __ATOMIC_RELAXED);
	}
	return s == 2;
}

EXPORT int bind(int fd, const struct sockaddr *sa, socklen_t len)
{
	struct sockaddr_storage ss;
	int r;

	if (export_mode() && udp_export_bind(fd, sa, len, real_bind, (int32_t)getpid(), &r))  /* UDP */
		return r;
	if (!export_mode() || !sa || len > sizeof(ss) || len < sizeof(sa_family_t) ||
	    (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) || !inet_socket_family(fd, SOCK_STREAM))
		return real_bind(fd, sa, len);
	memcpy(&ss, sa, len);
	if ((ss.ss_family == AF_INET && len < sizeof(struct sockaddr_in)) ||
	    (ss.ss_family == AF_INET6 && len < sizeof(struct sockaddr_in6)))
		return real_bind(fd, sa, len);    /* let the kernel give its EINVAL */
	addr_to_loopback(&ss);
	return real_bind(fd, (struct sockaddr *)&ss, len);
}

EXPORT int listen(int fd, int backlog)
{
	struct sockaddr_storage ss;
	socklen_t l = sizeof(ss);
	int e0 = errno, fam, r;
	uint16_t port;

	if (!export_mode() || !(fam = inet_socket_family(fd, SOCK_STREAM)))
		return real_listen(fd, backlog);
	memset(&ss, 0, sizeof(ss));
	if (getsockname(fd, (struct sockaddr *)&ss, &l) == 0 &&
	    ((fam == AF_INET && ((struct sockaddr_in *)&ss)->sin_port == 0) ||
	     (fam == AF_INET6 && ((struct sockaddr_in6 *)&ss)->sin6_port == 0))) {
		/* Unbound: the kernel would bind 0.0.0.0 / ::. Bind loopback ourselves. */
		addr_to_loopback(&ss);
		ss.ss_family = (sa_family_t)fam;
		if (real_bind(fd, (struct sockaddr *)&ss,
			      fam == AF_INET ? sizeof(struct sockaddr_in)
					     : sizeof(struct sockaddr_in6)) != 0)
			return -1;
	}
	r = real_listen(fd, backlog);
	if (r != 0)
		return r;
	l = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &l) == 0) {
		port = ntohs(fam == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
					    : ((struct sockaddr_in6 *)&ss)->sin6_port);
		chan_listen_notice(OP_LISTEN, fam == AF_INET ? 4 : 6, port, getpid());
	}
	errno = e0;
	return 0;
}

EXPORT int close(int fd)
{
	struct sockaddr_storage ss;
	socklen_t l = sizeof(ss);
	int acc = 0, fam = 0, r, e;
	uint16_t port = 0;

	if (export_mode()) {
		socklen_t al = sizeof(acc);
		e = errno;
		if (real_getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &al) == 0 && acc &&
		    (fam = inet_socket_family(fd, SOCK_STREAM)) && getsockname(fd, (struct sockaddr *)&ss, &l) == 0)
			port = ntohs(fam == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
						    : ((struct sockaddr_in6 *)&ss)->sin6_port);
		errno = e;
	}
	r = real_close(fd);
	if (port) {
		e = errno;
		chan_listen_notice(OP_UNLISTEN, fam == AF_INET ? 4 : 6, port, getpid());
		errno = e;
	}
	return r;
}
