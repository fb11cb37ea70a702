/* Export mode (TAILPROXY_EXPORT_LISTENERS=1), as the preload's listen.c and udpexport.c: the
 * program's TCP and UDP servers are held to loopback and the exporter is told about each port,
 * which the node then serves on the tailnet. bind() to a non-loopback address is made here on the
 * program's socket with 127.0.0.1 / ::1 (same port); listen() on an unbound socket binds it
 * to loopback first (the kernel would pick 0.0.0.0); after listen() succeeds the port goes to
 * the exporter (LISTEN). A UDP socket bound to a fixed port is a server: held to loopback and
 * told at its bind() (udpexport.c decides, for both front ends). The end of a server needs no
 * notice: the exporter reads the kernel's sockets every quarter second. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "seccomp_exec.h"

int export_mode(void)
{
	const char *v = getenv("TAILPROXY_EXPORT_LISTENERS");

	return v && v[0] == '1' && tp_config()->active;
}

void on_bind(const struct call *c)
{
	const __u64 *a = c->req->data.args;
	struct sockaddr_storage ss;
	socklen_t len = (socklen_t)a[2];
	int s, r;

	memset(&ss, 0, sizeof(ss));
	if (!export_mode() || len < sizeof(sa_family_t) || len > sizeof(ss) ||
	    target_read(c, a[1], &ss, len) != 0 ||
	    (ss.ss_family != AF_INET && ss.ss_family != AF_INET6) ||
	    (ss.ss_family == AF_INET && len < sizeof(struct sockaddr_in)) ||
	    (ss.ss_family == AF_INET6 && len < sizeof(struct sockaddr_in6))) {
		answer_continue(c);     /* not ours, or the kernel's EINVAL */
		return;
	}
	if ((s = target_fd(c, (int)a[0])) < 0 || !call_valid(c)) {
		if (s >= 0)
			close(s);
		answer_continue(c);
		return;
	}
	if (udp_export_bind(s, (struct sockaddr *)&ss, len, bind, (int32_t)c->req->pid, &r)) {
		answer(c, 0, r == 0 ? 0 : errno);
		close(s);
		return;
	}
	if (!inet_socket_family(s, SOCK_STREAM) || !addr_to_loopback(&ss)) {
		close(s);
		answer_continue(c);     /* a client's UDP port, loopback already, or not inet */
		return;
	}
	r = bind(s, (struct sockaddr *)&ss, len);
	answer(c, 0, r == 0 ? 0 : errno);
	close(s);
}

static uint16_t bound_port(int s, int fam, struct sockaddr_storage *ss)
{
	socklen_t l = sizeof(*ss);

	memset(ss, 0, sizeof(*ss));
	if (getsockname(s, (struct sockaddr *)ss, &l) != 0)
		return 0;
	return ntohs(fam == AF_INET ? ((struct sockaddr_in *)ss)->sin_port
				    : ((struct sockaddr_in6 *)ss)->sin6_port);
}

void on_listen(const struct call *c)
{
	const __u64 *a = c->req->data.args;
	struct sockaddr_storage ss;
	int s, fam, r;
	uint16_t port;

	if (!export_mode() || (s = target_fd(c, (int)a[0])) < 0) {
		answer_continue(c);
		return;
	}
	if (!(fam = inet_socket_family(s, SOCK_STREAM)) || !call_valid(c)) {
		close(s);
		answer_continue(c);
		return;
	}
	if (bound_port(s, fam, &ss) == 0) {
		/* unbound: the kernel would bind 0.0.0.0 / ::; bind loopback ourselves */
		addr_to_loopback(&ss);
		ss.ss_family = (sa_family_t)fam;
		if (bind(s, (struct sockaddr *)&ss, fam == AF_INET ? sizeof(struct sockaddr_in)
								  : sizeof(struct sockaddr_in6)) != 0) {
			answer(c, 0, errno);
			close(s);
			return;
		}
	}
	r = listen(s, (int)a[1]);
	if (r != 0) {
		answer(c, 0, errno);
		close(s);
		return;
	}
	port = bound_port(s, fam, &ss);
	close(s);
	answer(c, 0, 0);
	if (port)
		chan_listen_notice(OP_LISTEN, fam == AF_INET ? 4 : 6, port, (int)c->req->pid);
}
