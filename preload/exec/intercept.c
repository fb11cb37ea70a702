/* What a trapped call becomes. connect() to a destination the proxy routes: the preload's
 * hand-over on the program's own socket (taken with pidfd_getfd; same socket, fd number,
 * options and flags), answered with the result the preload's connect() would return. Port 53
 * (connect, sendto, sendmsg): the name service's DNS responder, as udpdns.c does. UDP to
 * other routed destinations (connect, sendto, sendmsg, sendmmsg): the node's endpoints, as
 * udp.c does (udpsend.c). Their answers, on recvfrom()/recvmsg()/recvmmsg(): udprecv.c.
 * getpeername() of a relayed socket: the destination the program asked for;
 * getsockopt(SO_ERROR) of a handed-over connect: its real errno (outcome.c); bind()/listen()
 * with exports: exports.c. Everything else, and a destination the routing table sends
 * direct, runs as the program made it (SECCOMP_USER_NOTIF_FLAG_CONTINUE): only calls whose
 * memory we merely looked at continue; a call we acted on is always answered by us. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

#include "../src/names.h"
#include "seccomp_exec.h"

#define DNS_PORT 53
#define DNS_MAX 65536           /* one datagram */
#define IOV_MAX_READ 16

static int handed_over;        /* set once: only then can a socket's peer need rewriting */

int handed_over_any(void)
{
	return __atomic_load_n(&handed_over, __ATOMIC_RELAXED);
}

static void note_hand_over(void)
{
	if (!__atomic_load_n(&handed_over, __ATOMIC_RELAXED))
		__atomic_store_n(&handed_over, 1, __ATOMIC_RELAXED);
}

static void say(int pid, const char *what, const struct tp_addr *dst, int err)
{
	struct tp_log l;
	const char *name = tp_errname(err);

	log_init(&l);
	log_str(&l, "tailproxy: pid ");
	log_num(&l, pid);
	log_str(&l, " ");
	log_str(&l, what);
	log_str(&l, " ");
	log_addr(&l, dst);
	log_str(&l, ": ");
	if (err == 0) {
		log_str(&l, "connected");
	} else if (err == EINPROGRESS) {
		log_str(&l, "in progress");
	} else if (err < 0) {
		log_str(&l, "answered by the name service");
	} else {
		log_errno(&l, err);
		if (name) {
			log_str(&l, " (");
			log_str(&l, name);
			log_str(&l, ")");
		}
	}
	log_flush(&l);
}

/* We could not take the program's socket. A bad fd gets the kernel's own answer (EBADF,
 * ENOTSOCK: nothing is sent); anything else fails the call rather than let it go out
 * unseen (with an exit node, that would leave from this host's own address). */
static void fail_closed(const struct call *c, const struct tp_addr *dst)
{
	int e = errno;

	if (e == EBADF || !call_valid(c)) {
		answer_continue(c);
		return;
	}
	say((int)c->req->pid, "cannot take the socket for", dst, e);
	answer(c, 0, ENETUNREACH);
}

/* ---------------------------------------------------------------- port 53 */

static int is_dns(const struct tp_addr *dst)
{
	return dst->port == DNS_PORT && tp_dns()->active && !tp_bypassed(tp_config(), dst);
}

/* The responder's address for socket s (UDP or TCP, IPv4 or IPv6): its length, 0 if s is not
 * such a socket, -1 if there is no responder to send to. */
static int responder_for(int s, struct sockaddr_storage *to)
{
	const struct tp_dns_config *d = tp_dns();
	int type = sock_int(s, SOL_SOCKET, SO_TYPE), proto, domain;

	if (type != SOCK_DGRAM && type != SOCK_STREAM)
		return 0;
	proto = sock_int(s, SOL_SOCKET, SO_PROTOCOL);
	if (proto != 0 && proto != IPPROTO_UDP && proto != IPPROTO_TCP)
		return 0;
	domain = sock_int(s, SOL_SOCKET, SO_DOMAIN);
	if (domain != AF_INET && domain != AF_INET6)
		return 0;
	if (domain == AF_INET6 && d->server[1].family)
		return (int)tp_to_sa(&d->server[1], AF_INET6, 0, to);
	if (d->server[0].family)
		return (int)tp_to_sa(&d->server[0], domain, domain == AF_INET6, to);
	return -1;
}

static void refuse_dns(const struct call *c, const struct tp_addr *dst)
{
	struct tp_log l;

	log_init(&l);
	log_str(&l, "tailproxy: DNS query to ");
	log_addr(&l, dst);
	log_str(&l, " refused: no name service in this run (queries never go to the network)");
	log_flush(&l);
	answer(c, 0, ENETUNREACH);
}

/* connect(), sendto() or sendmsg() to port 53: made here on the program's socket towards the
 * responder. send: the datagram (NULL for connect). */
static void dns_call(const struct call *c, int fd, const struct tp_addr *dst, int mapped,
		     const void *buf, size_t n, int flags)
{
	struct sockaddr_storage to;
	int s = target_fd(c, fd), tolen;
	ssize_t r;

	if (s < 0) {
		fail_closed(c, dst);
		return;
	}
	tolen = responder_for(s, &to);
	if (tolen == 0) {
		close(s);
		answer_continue(c);     /* not a UDP/TCP socket: the kernel's answer */
		return;
	}
	if (tolen < 0) {
		close(s);
		refuse_dns(c, dst);
		return;
	}
	if (!call_valid(c)) {
		close(s);
		return;
	}
	if (buf)
		r = sendto(s, buf, n, flags | MSG_NOSIGNAL, (struct sockaddr *)&to, (socklen_t)tolen);
	else
		r = connect(s, (struct sockaddr *)&to, (socklen_t)tolen);
	if (r >= 0 && sock_int(s, SOL_SOCKET, SO_TYPE) == SOCK_DGRAM)
		dns_socket_add(sock_ino(s), dst, mapped);       /* its answers: udprecv.c */
	answer(c, r < 0 ? -1 : r, r < 0 ? errno : 0);
	if (tp_config()->verbose)
		say((int)c->req->pid, buf ? "DNS query to" : "DNS connection to", dst, -1);
	close(s);
}

static void on_sendto(const struct call *c)
{
	const __u64 *a = c->req->data.args;
	struct sockaddr_storage ss;
	socklen_t len = (socklen_t)a[5];
	struct tp_addr dst;
	size_t n = (size_t)a[2];
	int mapped;
	void *buf;

	if (len < sizeof(sa_family_t) || len > sizeof(ss) || target_read(c, a[4], &ss, len) != 0 ||
	    sa_to_tp((struct sockaddr *)&ss, len, &dst, &mapped) != 0) {
		answer_continue(c);
		return;
	}
	if (!is_dns(&dst)) {
		if (udp_routed(&dst))
			udp_sendto(c, &dst, ss.ss_family);      /* udpsend.c */
		else
			answer_continue(c);
		return;
	}
	if (n > DNS_MAX || !(buf = malloc(n ? n : 1))) {
		answer(c, 0, EMSGSIZE);
		return;
	}
	if (target_read(c, a[1], buf, n) != 0)
		answer(c, 0, EFAULT);
	else
		dns_call(c, (int)a[0], &dst, mapped, buf, n, (int)a[3]);
	free(buf);
}

static void on_sendmsg(const struct call *c)
{
	const __u64 *a = c->req->data.args;
	struct sockaddr_storage ss;
	struct iovec iov[IOV_MAX_READ];
	struct msghdr mh;
	struct tp_addr dst;
	size_t total = 0, i;
	int mapped;
	char *buf;

	if (target_read(c, a[1], &mh, sizeof(mh)) != 0 || !mh.msg_name ||
	    mh.msg_namelen < sizeof(sa_family_t) || mh.msg_namelen > sizeof(ss) ||
	    target_read(c, (uintptr_t)mh.msg_name, &ss, mh.msg_namelen) != 0 ||
	    sa_to_tp((struct sockaddr *)&ss, mh.msg_namelen, &dst, &mapped) != 0) {
		answer_continue(c);
		return;
	}
	if (!is_dns(&dst)) {
		if (udp_routed(&dst))
			udp_sendmsg(c, &dst, ss.ss_family);     /* udpsend.c */
		else
			answer_continue(c);
		return;
	}
	if (mh.msg_iovlen > IOV_MAX_READ ||
	    target_read(c, (uintptr_t)mh.msg_iov, iov, mh.msg_iovlen * sizeof(iov[0])) != 0) {
		answer(c, 0, mh.msg_iovlen > IOV_MAX_READ ? EMSGSIZE : EFAULT);
		return;
	}
	for (i = 0; i < mh.msg_iovlen; i++) {
		if (iov[i].iov_len > DNS_MAX - total) {
			answer(c, 0, EMSGSIZE);
			return;
		}
		total += iov[i].iov_len;
	}
	if (!(buf = malloc(total ? total : 1))) {
		answer(c, 0, ENOMEM);
		return;
	}
	for (i = 0, total = 0; i < mh.msg_iovlen; total += iov[i].iov_len, i++)
		if (target_read(c, (uintptr_t)iov[i].iov_base, buf + total, iov[i].iov_len) != 0) {
			answer(c, 0, EFAULT);
			free(buf);
			return;
		}
	/* ancillary data (rare for DNS) is not carried over */
	dns_call(c, (int)a[0], &dst, mapped, buf, total, (int)a[2]);
	free(buf);
}

/* sendmmsg() with an address (its first message's decides): port 53 is refused rather than
 * sent unseen (resolvers send on connected sockets: no address, not trapped further); a
 * routed destination goes through the node. */
static void on_sendmmsg(const struct call *c)
{
	const __u64 *a = c->req->data.args;
	struct sockaddr_storage ss;
	struct mmsghdr mm;
	struct tp_addr dst;
	int mapped;

	if (a[2] == 0 || target_read(c, a[1], &mm, sizeof(mm)) != 0 || !mm.msg_hdr.msg_name ||
	    mm.msg_hdr.msg_namelen < sizeof(sa_family_t) || mm.msg_hdr.msg_namelen > sizeof(ss) ||
	    target_read(c, (uintptr_t)mm.msg_hdr.msg_name, &ss, mm.msg_hdr.msg_namelen) != 0 ||
	    sa_to_tp((struct sockaddr *)&ss, mm.msg_hdr.msg_namelen, &dst, &mapped) != 0) {
		answer_continue(c);
		return;
	}
	if (is_dns(&dst))
		refuse_dns(c, &dst);
	else if (udp_routed(&dst))
		udp_sendmmsg(c, &dst, ss.ss_family);    /* udpsend.c */
	else
		answer_continue(c);
}

/* ---------------------------------------------------------------- connect */

static int park_address(int domain, const struct sockaddr **park, socklen_t *plen)
{
	const struct tp_config *cfg = tp_config();

	if (domain == AF_INET && cfg->park4.sin_port) {
		*park = (const struct sockaddr *)&cfg->park4;
		*plen = sizeof(cfg->park4);
		return 1;
	}
	if (domain == AF_INET6 && cfg->park6.sin6_port) {
		*park = (const struct sockaddr *)&cfg->park6;
		*plen = sizeof(cfg->park6);
		return 1;
	}
	return 0;
}

/* Wait for the outcome of a parked connect, as the preload's blocking connect does
 * (connect.c wait_pending): writable or failed once the proxy moves it on, the real errno
 * from outcome.c. Bounded by SO_SNDTIMEO (then EINPROGRESS, the connect going on); ends
 * early (-1) when the call is gone (a signal interrupted the program's wait). */
static int wait_parked(const struct call *c, int s, uint64_t token, int ms)
{
	int64_t deadline = now_ns() + (int64_t)ms * 1000000;

	for (;;) {
		struct pollfd p = {.fd = s, .events = POLLOUT};
		int st = tcp_state(s), err, wait = st == TCP_SYN_SENT ? 100 : 5;

		if (st != TCP_SYN_SENT && pending_outcome_v(s, token, so_error_of(s), &err)) {
			if (err)
				so_error_of(s); /* the kernel's failed connect leaves SO_ERROR
						 * clear, as in connect.c's wait_pending */
			return err;
		}
		if (ms > 0) {
			int64_t left = (deadline - now_ns()) / 1000000;
			if (left <= 0)
				return EINPROGRESS;
			if (left < wait)
				wait = (int)left;
		}
		if (poll(&p, 1, wait) < 0 && errno != EINTR)
			return errno;
		if (!call_valid(c))
			return -1;
	}
}

/* A blocking connect, in the worker that received it (main.c keeps another worker ready):
 * parked here and registered without a reply (the preload's fast path), then its outcome
 * awaited; else the full path, where the proxy replies once the dial has an outcome. The
 * program's thread waits in its call meanwhile; a signal to it ends the wait (the call is
 * then restarted or fails with EINTR, as the kernel's would) and the connect goes on, as the
 * kernel's does. */
static void blocking_connect(const struct call *c, const struct tp_addr *dst, int s, int domain)
{
	const struct sockaddr *park;
	socklen_t plen;
	uint64_t token = 0;
	int err = 0, fl, r = -1, e = EAGAIN;

	if (park_address(domain, &park, &plen) && (fl = fcntl(s, F_GETFL)) >= 0 &&
	    fcntl(s, F_SETFL, fl | O_NONBLOCK) == 0) {
		r = chan_connect_parked(dst, s, park, plen, &token);
		e = errno;
		fcntl(s, F_SETFL, fl);
	}
	if (r == 0) {
		err = wait_parked(c, s, token, send_timeout_ms(s));
		if (err == EINPROGRESS || err < 0)
			pending_add(sock_ino(s), token);        /* SO_ERROR tells the rest */
		else if (err == 0 && connect(s, park, plen) != 0 && errno != EISCONN)
			err = errno;    /* the socket learns it is connected (else a later
					 * connect() would give 0, not EISCONN), as in connect.c */
	} else if (e == ENETDOWN) {
		err = ENETDOWN;
	} else if (chan_connect(dst, s, 1, send_timeout_ms(s), &err, &token) != 0) {
		err = errno;
		if (err == ETIMEDOUT)
			err = EINPROGRESS;      /* SO_SNDTIMEO expired, like Linux */
		else if (err == EINTR)
			err = ENETDOWN;
	}
	if (err >= 0) {
		answer(c, 0, err);
		if (tp_config()->verbose)
			say((int)c->req->pid, "connect to", dst, err);
	}
}

/* A non-blocking connect: parked and registered without waiting (the preload's fast path),
 * else the full path's quick reply; EINPROGRESS either way once handed over. */
static int nonblocking_connect(const struct tp_addr *dst, int s, int domain, uint64_t *token)
{
	const struct sockaddr *park;
	socklen_t plen;
	int err = 0;

	if (park_address(domain, &park, &plen)) {
		if (chan_connect_parked(dst, s, park, plen, token) == 0)
			return EINPROGRESS;
		if (errno == ENETDOWN)
			return ENETDOWN;
	}
	if (chan_connect(dst, s, 0, 0, &err, token) != 0)
		return errno == ETIMEDOUT ? ENETDOWN : errno;
	return err ? err : EINPROGRESS;
}

static void on_connect(struct call *c)
{
	const __u64 *a = c->req->data.args;
	struct sockaddr_storage ss;
	socklen_t len = (socklen_t)a[2];
	struct tp_addr dst;
	int mapped, domain, s, fl, err;

	if (!tp_config()->active || len < sizeof(sa_family_t) || len > sizeof(ss) ||
	    target_read(c, a[1], &ss, len) != 0 ||
	    sa_to_tp((struct sockaddr *)&ss, len, &dst, &mapped) != 0) {
		answer_continue(c);
		return;
	}
	if (is_dns(&dst)) {
		dns_call(c, (int)a[0], &dst, mapped, NULL, 0, 0);
		return;
	}
	if (tp_goes_direct(tp_config(), &dst) || tp_table_direct(&dst)) {
		answer_continue(c);     /* loopback, bypassed, or what the proxy would dial direct */
		return;
	}
	s = target_fd(c, (int)a[0]);
	if (s < 0) {
		fail_closed(c, &dst);
		return;
	}
	if (sock_int(s, SOL_SOCKET, SO_TYPE) == SOCK_DGRAM) {
		udp_connect(c, s, &dst, ss.ss_family, (struct sockaddr *)&ss, len);  /* udpsend.c */
		close(s);
		return;
	}
	if (!tcp_socket_of(s, ss.ss_family, mapped, &domain) || tcp_state(s) != TCP_CLOSE) {
		/* not TCP, or connected/connecting/listening: the kernel's own answer (EISCONN,
		 * EALREADY...), which never dials */
		close(s);
		answer_continue(c);
		return;
	}
	if (!call_valid(c)) {
		close(s);
		return;
	}
	note_hand_over();
	fl = fcntl(s, F_GETFL);
	if (fl >= 0 && (fl & O_NONBLOCK)) {
		uint64_t token = 0;

		err = nonblocking_connect(&dst, s, domain, &token);
		if (err == EINPROGRESS)
			pending_add(sock_ino(s), token);
		answer(c, 0, err);
		if (tp_config()->verbose)
			say((int)c->req->pid, "connect to", &dst, err);
		close(s);
		return;
	}
	blocking_connect(c, &dst, s, domain);
	close(s);
}

/* ---------------------------------------------------------------- SO_ERROR */

/* getsockopt(SOL_SOCKET, SO_ERROR) on a handed-over non-blocking connect: the outcome the
 * preload's hook gives (outcome.c: the real errno for the kernel's ECONNREFUSED, "in
 * progress" through the hand-over), read and cleared on the program's own socket. */
static void on_so_error(const struct call *c)
{
	const __u64 *a = c->req->data.args;
	uint64_t ino, token;
	socklen_t room;
	int s, v, out;

	/* no pending connect at all (the common case: a direct dial): the kernel's answer at once */
	if (!pending_any() || !a[3] || !a[4] || (s = target_fd(c, (int)a[0])) < 0) {
		answer_continue(c);
		return;
	}
	ino = sock_ino(s);
	if (!pending_token(ino, &token) || target_read(c, a[4], &room, sizeof(room)) != 0 ||
	    room < sizeof(int) || !call_valid(c)) {
		close(s);
		answer_continue(c);     /* not ours, or the kernel's EFAULT/EINVAL */
		return;
	}
	v = so_error_of(s);
	if (v != 0 && v != ECONNREFUSED && v != ECONNRESET) {
		out = v;
		pending_drop(ino);
	} else if (pending_outcome_v(s, token, v, &out)) {
		pending_drop(ino);
	} else {
		out = 0;                /* no outcome yet: in progress */
	}
	close(s);
	room = sizeof(int);
	if (target_write(c, a[3], &out, sizeof(out)) != 0 ||
	    target_write(c, a[4], &room, sizeof(room)) != 0) {
		answer(c, 0, EFAULT);
		return;
	}
	answer(c, 0, 0);
}

/* ---------------------------------------------------------------- getpeername */

static int is_loopback(const struct tp_addr *a)
{
	static const uint8_t one[16] = {[15] = 1};

	return a->family == 4 ? a->addr[0] == 127 : memcmp(a->addr, one, 16) == 0;
}

/* A socket relayed by the proxy is connected to its loopback relay: the program is shown the
 * destination it asked for (the proxy knows it by the socket's local address, as peername.c
 * asks); a UDP socket connected to a node's endpoint, the destination of that association.
 * Anything else is the kernel's own answer. */
static void on_getpeername(const struct call *c)
{
	const __u64 *a = c->req->data.args;
	struct sockaddr_storage ss, out;
	socklen_t sslen = sizeof(ss), outlen, room;
	struct tp_addr peer, local, dst;
	int s, mapped, err, type;

	if (!tp_config()->active || (!handed_over_any() && !udp_route_any()) || !a[1] || !a[2] ||
	    (s = target_fd(c, (int)a[0])) < 0) {
		answer_continue(c);
		return;
	}
	if (real_getpeername(s, (struct sockaddr *)&ss, &sslen) != 0 || sslen > sizeof(ss) ||
	    sa_to_tp((struct sockaddr *)&ss, sslen, &peer, &mapped) != 0 || !is_loopback(&peer)) {
		close(s);
		answer_continue(c);
		return;
	}
	type = sock_int(s, SOL_SOCKET, SO_TYPE);
	if (type == SOCK_DGRAM && udp_route_source(sock_ino(s), (struct sockaddr *)&ss, sslen, &dst)) {
		/* connected to a UDP endpoint (udproute.c) */
		outlen = tp_to_sa(&dst, ss.ss_family, dst.family == 4 && ss.ss_family == AF_INET6, &out);
	} else if (type != SOCK_STREAM || local_port(s, &local) == 0 ||
		   chan_peer(&local, &err, &dst) != 0 || err != 0) {
		outlen = 0;
	} else {
		outlen = tp_to_sa(&dst, ss.ss_family, 0, &out);
	}
	if (outlen == 0) {
		close(s);
		answer_continue(c);
		return;
	}
	close(s);
	if (target_read(c, a[2], &room, sizeof(room)) != 0) {
		answer(c, 0, EFAULT);
		return;
	}
	if (!call_valid(c))
		return;
	if (target_write(c, a[1], &out, room < outlen ? room : outlen) != 0 ||
	    target_write(c, a[2], &outlen, sizeof(outlen)) != 0) {
		answer(c, 0, EFAULT);
		return;
	}
	answer(c, 0, 0);
}

void handle_call(int listener, struct seccomp_notif *req)
{
	struct call c = {.listener = listener, .req = req};

	switch (req->data.nr) {
	case __NR_connect:
		on_connect(&c);
		break;
	case __NR_getpeername:
		on_getpeername(&c);
		break;
	case __NR_bind:
		on_bind(&c);
		break;
	case __NR_listen:
		on_listen(&c);
		break;
	case __NR_getsockopt:
		on_so_error(&c);
		break;
	case __NR_sendto:
		on_sendto(&c);
		break;
	case __NR_sendmsg:
		on_sendmsg(&c);
		break;
	case __NR_sendmmsg:
		on_sendmmsg(&c);
		break;
	case __NR_recvfrom:
		on_recvfrom(&c);
		break;
	case __NR_recvmsg:
		on_recvmsg(&c);
		break;
	case __NR_recvmmsg:
		on_recvmmsg(&c);
		break;
	default:
		answer_continue(&c);
	}
}
