/* Port-53 traffic a program sends itself (dig, c-ares, its own resolver): a connect(), sendto(),
 * sendmsg() or sendmmsg() to port 53 of any address (loopback included: a local stub resolver
 * would forward the query; TAILPROXY_BYPASS addresses excepted) goes to the name service's DNS
 * responder on loopback instead (TAILPROXY_DNS_SERVER), UDP and TCP alike, so no query reaches
 * the network. Answers come back from the responder's address; recvfrom(), recvmsg() and
 * recvmmsg() show the address the program sent to, so resolvers that check the source accept
 * them. Without a responder address the traffic is refused (ENETUNREACH, one stderr line). */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "names.h"

typedef ssize_t (*sendto_fn)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
typedef int (*sendmmsg_fn)(int, struct mmsghdr *, unsigned int, int);
typedef ssize_t (*recvfrom_fn)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
typedef int (*recvmmsg_fn)(int, struct mmsghdr *, unsigned int, int, struct timespec *);

#define DNS_PORT 53
#define TABLE 65536
#define CHUNK 32

/* fd -> the DNS server the program addressed last (validated by socket inode) */
struct slot {
	uint32_t seq;
	uint32_t meta;          /* family | mapped << 8 | port << 16 */
	uint64_t ino;
	uint64_t a0, a1;
};
static struct slot table[TABLE];

static void remember(int fd, const struct tp_addr *a, int mapped)
{
	struct slot *s;
	uint64_t ino, w[2];
	uint32_t q;
	int i;

	if (fd < 0 || fd >= TABLE || !(ino = sock_ino(fd)))
		return;
	s = &table[fd];
	for (i = 0; i < 1000; i++) {
		q = __atomic_load_n(&s->seq, __ATOMIC_RELAXED);
		if (!(q & 1) && __atomic_compare_exchange_n(&s->seq, &q, q + 1, 0, __ATOMIC_ACQUIRE,
							     __ATOMIC_RELAXED))
			break;
		sched_yield();
	}
	if (i == 1000)
		return;
	memcpy(w, a->addr, 16);
	__atomic_store_n(&s->meta, (uint32_t)a->family | (uint32_t)mapped << 8 |
			 (uint32_t)a->port << 16, __ATOMIC_RELAXED);
	__atomic_store_n(&s->ino, ino, __ATOMIC_RELAXED);
	__atomic_store_n(&s->a0, w[0], __ATOMIC_RELAXED);
	__atomic_store_n(&s->a1, w[1], __ATOMIC_RELAXED);
	__atomic_add_fetch(&s->seq, 1, __ATOMIC_RELEASE);
}

static int recall(int fd, struct tp_addr *a, int *mapped)
{
	struct slot *s;
	uint64_t ino, w[2];
	uint32_t q, meta;
	int i;

	if (fd < 0 || fd >= TABLE)
		return 0;
	s = &table[fd];
	for (i = 0; i < 100; i++) {
		q = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
		if (q & 1) {
			sched_yield();
			continue;
		}
		meta = __atomic_load_n(&s->meta, __ATOMIC_RELAXED);
		ino = __atomic_load_n(&s->ino, __ATOMIC_RELAXED);
		w[0] = __atomic_load_n(&s->a0, __ATOMIC_RELAXED);
		w[1] = __atomic_load_n(&s->a1, __ATOMIC_RELAXED);
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (__atomic_load_n(&s->seq, __ATOMIC_RELAXED) == q)
			break;
	}
	if (i == 100 || !ino || ino != sock_ino(fd))
		return 0;
	memset(a, 0, sizeof(*a));
	a->family = (uint8_t)(meta & 0xff);
	a->port = (uint16_t)(meta >> 16);
	memcpy(a->addr, w, 16);
	*mapped = (meta >> 8) & 1;
	return a->family == 4 || a->family == 6;
}

static void refuse_line(const struct tp_addr *dst)
{
	static int printed_pid;
	int pid = getpid(), old = __atomic_load_n(&printed_pid, __ATOMIC_ACQUIRE);
	struct tp_log l;

	if (old == pid || !__atomic_compare_exchange_n(&printed_pid, &old, pid, 0,
							__ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
		return;
	log_init(&l);
	log_str(&l, "tailproxy: DNS query to ");
	log_addr(&l, dst);
	log_str(&l, " refused: no name service in this run (queries never go to the network)");
	log_flush(&l);
}

static void verbose_line(int fd, const struct tp_addr *dst, int stream)
{
	struct tp_log l;

	if (!tp_config()->verbose)
		return;
	log_init(&l);
	log_str(&l, "tailproxy: DNS ");
	log_str(&l, stream ? "connection" : "query");
	log_str(&l, " fd ");
	log_num(&l, fd);
	log_str(&l, " to ");
	log_addr(&l, dst);
	log_str(&l, " answered by the name service");
	log_flush(&l);
}

static size_t iov_len(const struct msghdr *m)
{
	size_t n = 0, i;

	for (i = 0; m->msg_iov && i < m->msg_iovlen; i++)
		n += m->msg_iov[i].iov_len;
	return n;
}

/* Is this a send to port 53 that we take? 1 with the responder's address in *to (for the
 * socket's family), -1 when it must be refused, 0 when it is not ours. */
static int redirect(int fd, const struct sockaddr *sa, socklen_t len, int want_type,
		    struct sockaddr_storage *to, socklen_t *tolen, struct tp_addr *dst,
		    int *mapped)
{
	const struct tp_dns_config *d = tp_dns();
	int type, proto, domain;

	if (!sa || len < sizeof(sa_family_t) ||
	    (sa->sa_family != AF_INET && sa->sa_family != AF_INET6))
		return 0;
	if (!d->active || sa_to_tp(sa, len, dst, mapped) != 0 || dst->port != DNS_PORT ||
	    tp_bypassed(tp_config(), dst))
		return 0;
	type = sock_int(fd, SOL_SOCKET, SO_TYPE);
	if (type != SOCK_DGRAM && type != SOCK_STREAM)
		return 0;
	if (want_type && type != want_type)
		return 0;
	proto = sock_int(fd, SOL_SOCKET, SO_PROTOCOL);
	if (proto != 0 && proto != IPPROTO_UDP && proto != IPPROTO_TCP)
		return 0;
	domain = sock_int(fd, SOL_SOCKET, SO_DOMAIN);
	if (domain != AF_INET && domain != AF_INET6)
		return 0;
	if (domain == AF_INET6 && d->server[1].family)
		*tolen = tp_to_sa(&d->server[1], AF_INET6, 0, to);
	else if (d->server[0].family)
		*tolen = tp_to_sa(&d->server[0], domain, domain == AF_INET6, to);
	else
		return -1;
	verbose_line(fd, dst, type == SOCK_STREAM);
	return 1;
}

int dns_redirect_connect(int fd, const struct sockaddr *sa, socklen_t len, int *ret)
{
	struct sockaddr_storage to;
	socklen_t tolen = 0;
	struct tp_addr dst;
	int mapped, r, e0 = errno;

	r = redirect(fd, sa, len, 0, &to, &tolen, &dst, &mapped);
	if (r == 0) {
		errno = e0;
		return 0;
	}
	if (r < 0) {
		refuse_line(&dst);
		errno = ENETUNREACH;
		*ret = -1;
		return 1;
	}
	remember(fd, &dst, mapped);
	errno = e0;
	*ret = real_connect(fd, (struct sockaddr *)&to, tolen);
	return 1;
}

EXPORT ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *sa,
		      socklen_t len)
{
	sendto_fn real = TP_REAL(sendto_fn, sendto);
	struct sockaddr_storage to;
	socklen_t tolen = 0;
	struct tp_addr dst;
	int mapped, r, e0 = errno;

	r = redirect(fd, sa, len, SOCK_DGRAM, &to, &tolen, &dst, &mapped);
	errno = e0;
	if (r == 0) {
		if (!sa && udp_oversize_connected(fd, n)) {
			errno = EMSGSIZE;
			return -1;
		}
		r = udp_route_send(fd, sa, len, n, &to, &tolen);     /* udp.c */
		if (r < 0)
			return -1;
		return r ? real(fd, buf, n, flags, (struct sockaddr *)&to, tolen)
			 : real(fd, buf, n, flags, sa, len);
	}
	if (r < 0) {
		refuse_line(&dst);
		errno = ENETUNREACH;
		return -1;
	}
	remember(fd, &dst, mapped);
	return real(fd, buf, n, flags, (struct sockaddr *)&to, tolen);
}

EXPORT ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	sendmsg_fn real = real_sendmsg_fn();
	struct sockaddr_storage to;
	socklen_t tolen = 0;
	struct tp_addr dst;
	struct msghdr m;
	int mapped, r, e0 = errno;

	if (!msg)
		return real(fd, msg, flags);
	if (!msg->msg_name) {
		if (udp_oversize_connected(fd, iov_len(msg))) {
			errno = EMSGSIZE;
			return -1;
		}
		return real(fd, msg, flags);
	}
	r = redirect(fd, msg->msg_name, msg->msg_namelen, SOCK_DGRAM, &to, &tolen, &dst, &mapped);
	errno = e0;
	if (r == 0) {
		r = udp_route_send(fd, msg->msg_name, msg->msg_namelen, iov_len(msg), &to,
				   &tolen);                            /* udp.c */
		if (r < 0)
			return -1;
		if (r == 0)
			return real(fd, msg, flags);
		m = *msg;
		m.msg_name = &to;
		m.msg_namelen = tolen;
		return real(fd, &m, flags);
	}
	if (r < 0) {
		refuse_line(&dst);
		errno = ENETUNREACH;
		return -1;
	}
	remember(fd, &dst, mapped);
	m = *msg;
	m.msg_name = &to;
	m.msg_namelen = tolen;
	return real(fd, &m, flags);
}

EXPORT int sendmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags)
{
	sendmmsg_fn real = TP_REAL(sendmmsg_fn, sendmmsg);
	struct mmsghdr copy[CHUNK];
	struct sockaddr_storage to[CHUNK];
	struct tp_addr dst;
	unsigned int done = 0, i, k;
	int any = 0, mapped, r, e0 = errno;

	if (!vec)
		return real(fd, vec, vlen, flags);
	for (i = 0; i < vlen && !any; i++) {
		const struct sockaddr *sa = vec[i].msg_hdr.msg_name;
		socklen_t l = vec[i].msg_hdr.msg_namelen;
		struct tp_addr t;
		int m;
		if (sa && l >= sizeof(sa_family_t) &&
		    (sa->sa_family == AF_INET || sa->sa_family == AF_INET6) &&
		    sa_to_tp(sa, l, &t, &m) == 0 &&
		    (t.port == DNS_PORT || (tp_config()->active && !tp_goes_direct(tp_config(), &t) &&
					    !tp_table_direct(&t))))
			any = 1;
	}
	errno = e0;
	if (!any)
		return real(fd, vec, vlen, flags);
	while (done < vlen) {
		int stop_err = 0;

		k = vlen - done < CHUNK ? vlen - done : CHUNK;
		for (i = 0; i < k && !stop_err; i++) {
			struct msghdr *h = &copy[i].msg_hdr;
			socklen_t tolen = 0;

			copy[i] = vec[done + i];
			r = redirect(fd, h->msg_name, h->msg_namelen, SOCK_DGRAM, &to[i], &tolen, &dst,
				     &mapped);
			if (r == 0)             /* not DNS: routed UDP maybe (udp.c) */
				r = udp_route_send(fd, h->msg_name, h->msg_namelen, iov_len(h), &to[i],
						   &tolen) < 0 ? -2 : 2;
			if (r == -1) {
				refuse_line(&dst);
				stop_err = ENETUNREACH;
			} else if (r == -2) {
				stop_err = errno;
			} else if (r > 0 && tolen) {
				if (r == 1)
					remember(fd, &dst, mapped);
				h->msg_name = &to[i];
				h->msg_namelen = tolen;
			}
			if (stop_err)
				k = i;          /* send those before it, then stop */
		}
		if (k == 0) {                   /* the first one failed */
			if (done > 0) {
				errno = e0;
				return (int)done;
			}
			errno = stop_err;
			return -1;
		}
		errno = e0;
		r = real(fd, copy, k, flags);
		if (r < 0)
			return done > 0 ? (int)done : -1;
		for (i = 0; i < (unsigned int)r; i++)
			vec[done + i].msg_len = copy[i].msg_len;
		done += (unsigned int)r;
		if ((unsigned int)r < k || stop_err)
			break;
	}
	return (int)done;
}

/* After a receive: the responder's address becomes the one the program sent to. cap is the
 * size the program gave, *len the length the kernel reported. */
static void fix_source(int fd, struct sockaddr *sa, socklen_t cap, socklen_t *len)
{
	struct sockaddr_storage ss;
	struct tp_addr orig;
	socklen_t n;
	int mapped;

	if (!sa || !len || *len < sizeof(sa_family_t))
		return;
	if (*len > cap || !tp_dns_responder(sa, *len)) {  /* cut short: not all of it is there */
		udp_fix_source(fd, sa, cap, len);               /* udp.c */
		return;
	}
	if (!recall(fd, &orig, &mapped))
		return;
	n = tp_to_sa(&orig, sa->sa_family, mapped, &ss);
	if (!n)
		return;
	memcpy(sa, &ss, n < cap ? n : cap);
	*len = n;
}

EXPORT ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *sa,
			socklen_t *len)
{
	recvfrom_fn real = TP_REAL(recvfrom_fn, recvfrom);
	socklen_t cap = len ? *len : 0;
	ssize_t r = real(fd, buf, n, flags, sa, len);

	if (r >= 0 && sa && len && cap) {
		int e = errno;
		fix_source(fd, sa, cap, len);
		errno = e;
	}
	return r;
}

EXPORT ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
	recvmsg_fn real = real_recvmsg_fn();
	socklen_t cap = msg ? msg->msg_namelen : 0;
	ssize_t r = real(fd, msg, flags);

	if (r >= 0 && msg && msg->msg_name && cap) {
		int e = errno;
		fix_source(fd, msg->msg_name, cap, &msg->msg_namelen);
		errno = e;
	}
	return r;
}

EXPORT int recvmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags,
		    struct timespec *timeout)
{
	recvmmsg_fn real = TP_REAL(recvmmsg_fn, recvmmsg);
	socklen_t caps[CHUNK];
	unsigned int i, k = vlen < CHUNK ? vlen : CHUNK;
	int r;

	if (!vec)
		return real(fd, vec, vlen, flags, timeout);
	for (i = 0; i < k; i++)
		caps[i] = vec[i].msg_hdr.msg_namelen;
	r = real(fd, vec, vlen, flags, timeout);
	if (r > 0) {
		int e = errno;
		for (i = 0; i < (unsigned int)r && i < k; i++)
			if (vec[i].msg_hdr.msg_name && caps[i])
				fix_source(fd, vec[i].msg_hdr.msg_name, caps[i],
					   &vec[i].msg_hdr.msg_namelen);
		errno = e;
	}
	return r;
}
