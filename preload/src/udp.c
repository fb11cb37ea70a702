/* UDP to destinations the proxy routes (a peer, an accepted route, anything with an exit node
 * or --tailnet-only: the routing table decides, table.c). The program's socket stays a real UDP
 * socket: its datagrams to such a destination go instead to a loopback endpoint of the node
 * (asked once per socket and destination with the channel op UDP, docs/CHANNEL.md), which the
 * node relays to the tailnet in Go; datagrams back come from that endpoint, and recvfrom(),
 * recvmsg(), recvmmsg() and getpeername() show the destination instead (udpdns.c calls us from
 * its send and receive hooks, connect.c and peername.c from theirs).
 *
 * - connect() connects the socket to the endpoint: send()/recv() then need nothing of ours.
 * - A socket not yet bound is bound (wildcard, port 0: what the kernel would do at its first
 *   send) so the endpoint can be tied to its address before any datagram.
 * - A datagram larger than the tailnet carries in one packet (1280-byte MTU: 1252 bytes of
 *   payload to IPv4, 1232 to IPv6) fails with EMSGSIZE, as the kernel's send with a path MTU
 *   would; write() on a connected socket is not seen here: such a datagram is dropped.
 * - Each process remembers SLOTS associations (oldest forgotten first: asking again finds the
 *   node's association still there) and asks again after REASK_S, so one the node ended (its
 *   far side failed) is replaced. A connected socket keeps its endpoint: once that ended (the
 *   peer refused: ECONNREFUSED, as the kernel reports an ICMP unreachable), it must connect
 *   again.
 * The table is one seqlock per slot: no lock is ever waited on forever (a hook in a signal
 * handler, or a fork child of a thread caught mid-write, skips the slot). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <sched.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "names.h"

#define SLOTS 512
#define PROBE 16
#define REASK_S 10
#define FD_FLAGS 65536

struct assoc {              /* one association as this process knows it */
	int32_t fd;
	uint8_t direct;     /* the proxy said: send to dst yourself */
	uint8_t used;
	uint16_t zero;
	uint64_t ino;
	int64_t asked_ns;
	struct tp_addr dst;     /* as sa_to_tp gives it (IPv4-mapped made IPv4) */
	struct tp_addr ep;      /* the node's loopback endpoint */
};

#define WORDS ((sizeof(struct assoc) + 7) / 8)

struct slot {
	uint32_t seq;           /* odd while being written */
	uint64_t w[WORDS];
};

static struct slot slots[SLOTS];
static uint16_t by_port[65536];         /* endpoint port -> slot + 1 (checked on use) */
static uint8_t connected_fd[FD_FLAGS];  /* fd connected to an endpoint (checked on use) */

static int read_slot(int i, struct assoc *a)
{
	struct slot *s = &slots[i];
	uint64_t w[WORDS];
	uint32_t q;
	size_t k;
	int n;

	for (n = 0; n < 100; n++) {
		q = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
		if (q & 1) {
			sched_yield();
			continue;
		}
		for (k = 0; k < WORDS; k++)
			w[k] = __atomic_load_n(&s->w[k], __ATOMIC_RELAXED);
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (__atomic_load_n(&s->seq, __ATOMIC_RELAXED) == q)
			break;
	}
	if (n == 100 || q == 0)
		return 0;
	memcpy(a, w, sizeof(*a));
	return a->used;
}

static void write_slot(int i, const struct assoc *a)
{
	struct slot *s = &slots[i];
	uint64_t w[WORDS] = {0};
	uint32_t q;
	size_t k;
	int n;

	for (n = 0; n < 1000; n++) {
		q = __atomic_load_n(&s->seq, __ATOMIC_RELAXED);
		if (!(q & 1) && __atomic_compare_exchange_n(&s->seq, &q, q + 1, 0, __ATOMIC_ACQUIRE,
							     __ATOMIC_RELAXED))
			break;
		sched_yield();
	}
	if (n == 1000)
		return;
	memcpy(w, a, sizeof(*a));
	for (k = 0; k < WORDS; k++)
		__atomic_store_n(&s->w[k], w[k], __ATOMIC_RELAXED);
	__atomic_add_fetch(&s->seq, 1, __ATOMIC_RELEASE);
}

static int same_addr(const struct tp_addr *a, const struct tp_addr *b)
{
	return a->family == b->family && a->port == b->port &&
	       memcmp(a->addr, b->addr, a->family == 4 ? 4 : 16) == 0;
}

static unsigned int hash_of(int fd, const struct tp_addr *d)
{
	uint32_t h = 2166136261u ^ (uint32_t)fd;
	int i;

	for (i = 0; i < 16; i++)
		h = (h ^ d->addr[i]) * 16777619u;
	h = (h ^ d->port) * 16777619u;
	return h % SLOTS;
}

/* The slot of (fd, ino, dst), or -1; *victim gets where a new one would go. */
static int find(int fd, uint64_t ino, const struct tp_addr *dst, struct assoc *out, int *victim)
{
	unsigned int h = hash_of(fd, dst), k;
	int64_t oldest = 0;
	struct assoc a;

	*victim = (int)h;
	for (k = 0; k < PROBE; k++) {
		int i = (int)((h + k) % SLOTS);
		if (!read_slot(i, &a)) {
			if (oldest >= 0) {
				*victim = i;
				oldest = -1;    /* a free slot beats any old one */
			}
			continue;
		}
		if (a.fd == fd && a.ino == ino && same_addr(&a.dst, dst)) {
			*out = a;
			return i;
		}
		if (oldest >= 0 && (oldest == 0 || a.asked_ns < oldest)) {
			oldest = a.asked_ns;
			*victim = i;
		}
	}
	return -1;
}

/* Ask the proxy (udpassoc.c): 0 with *a filled in, or -1 with errno. */
static int ask(int fd, int domain, uint64_t ino, const struct tp_addr *dst, struct assoc *a)
{
	int direct;

	memset(a, 0, sizeof(*a));
	if (udp_assoc_ask(fd, domain, dst, &direct, &a->ep) != 0)
		return -1;
	a->fd = fd;
	a->ino = ino;
	a->used = 1;
	a->asked_ns = now_ns();
	a->dst = *dst;
	a->direct = (uint8_t)direct;
	return 0;
}

static void verbose_line(int fd, const struct tp_addr *dst, const struct assoc *a)
{
	struct tp_log l;

	if (!tp_config()->verbose || a->direct)     /* direct: as without tailproxy, no line */
		return;
	log_init(&l);
	log_str(&l, "tailproxy: UDP fd ");
	log_num(&l, fd);
	log_str(&l, " to ");
	log_addr(&l, dst);
	log_str(&l, ": through the node's endpoint ");
	log_addr(&l, &a->ep);
	log_flush(&l);
}

/* The association for a datagram of n bytes (n < 0: a connect) from fd to sa. 1 with *a,
 * 0 when the datagram is not ours, -1 with errno. */
static int associate(int fd, const struct sockaddr *sa, socklen_t len, ssize_t n,
		     struct assoc *a, int *domain_out)
{
	const struct tp_config *c = tp_config();
	struct tp_addr dst;
	uint64_t ino;
	int mapped, domain, victim, i, fresh;

	/* The table first: a destination sent directly costs the hook no syscall. */
	if (!c->active || !sa || len < sizeof(sa_family_t) ||
	    (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) ||
	    sa_to_tp(sa, len, &dst, &mapped) != 0 || dst.port == 0 || tp_goes_direct(c, &dst) ||
	    tp_table_direct(&dst))
		return 0;
	ino = sock_ino(fd);
	if (!ino)
		return 0;
	i = find(fd, ino, &dst, a, &victim);
	fresh = i >= 0 && now_ns() - a->asked_ns < (int64_t)REASK_S * 1000000000;
	if (fresh && a->direct) {
		struct tp_table t;

		if (tp_table_read(&t))
			fresh = 0;  /* "direct" from the proxy, yet the table routes it: ask again */
	}
	if (fresh) {
		domain = sa->sa_family;     /* a UDP socket of that family when remembered */
	} else {
		domain = udp_domain(fd);
		if (!domain || domain != sa->sa_family)
			return 0;           /* the kernel gives the right error */
		if (n > udp_payload_max(&dst)) {
			errno = EMSGSIZE;
			return -1;
		}
		if (ask(fd, domain, ino, &dst, a) != 0)
			return -1;
		write_slot(i >= 0 ? i : victim, a);
		if (!a->direct)
			__atomic_store_n(&by_port[a->ep.port], (uint16_t)((i >= 0 ? i : victim) + 1),
					 __ATOMIC_RELAXED);
		verbose_line(fd, &dst, a);
	}
	if (a->direct)
		return 0;
	if (n > udp_payload_max(&dst)) {
		errno = EMSGSIZE;
		return -1;
	}
	*domain_out = domain;
	return 1;
}

int udp_route_send(int fd, const struct sockaddr *sa, socklen_t len, size_t n,
		   struct sockaddr_storage *to, socklen_t *tolen)
{
	struct assoc a;
	int domain = 0, e0 = errno, r;

	r = associate(fd, sa, len, n > 65535 ? 65536 : (ssize_t)n, &a, &domain);
	if (r <= 0) {
		if (r == 0)
			errno = e0;
		return r;
	}
	*tolen = tp_to_sa(&a.ep, domain, a.ep.family == 4 && domain == AF_INET6, to);
	errno = e0;
	return 1;
}

int udp_redirect_connect(int fd, const struct sockaddr *sa, socklen_t len, int *ret)
{
	struct sockaddr_storage to;
	socklen_t tolen;
	struct assoc a;
	int domain = 0, e0 = errno, r;

	if (!tp_config()->active || sock_int(fd, SOL_SOCKET, SO_TYPE) != SOCK_DGRAM) {
		errno = e0;
		return 0;
	}
	r = associate(fd, sa, len, -1, &a, &domain);
	if (r == 0) {
		errno = e0;
		return 0;
	}
	if (r < 0) {
		*ret = -1;
		return 1;
	}
	tolen = tp_to_sa(&a.ep, domain, a.ep.family == 4 && domain == AF_INET6, &to);
	errno = e0;
	*ret = real_connect(fd, (struct sockaddr *)&to, tolen);
	if (*ret == 0 && fd >= 0 && fd < FD_FLAGS)
		__atomic_store_n(&connected_fd[fd], 1, __ATOMIC_RELAXED);
	return 1;
}

/* The destination behind endpoint address sa as fd receives from it: 1 with *dst. */
static int endpoint_dst(int fd, const struct sockaddr *sa, socklen_t len, struct tp_addr *dst)
{
	struct tp_addr src;
	struct assoc a;
	uint16_t idx;
	int mapped;

	if (!sa || len < sizeof(sa_family_t) ||
	    (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) ||
	    sa_to_tp(sa, len, &src, &mapped) != 0)
		return 0;
	if (src.family == 4 ? src.addr[0] != 127 : (src.addr[15] != 1 || src.addr[0] != 0))
		return 0;
	idx = __atomic_load_n(&by_port[src.port], __ATOMIC_RELAXED);
	if (!idx || !read_slot(idx - 1, &a) || a.direct || a.fd != fd || !same_addr(&a.ep, &src))
		return 0;
	*dst = a.dst;
	return 1;
}

/* A source address the caller's buffer cut short: only its family and port are there, and the
 * port alone names the endpoint (loopback can no longer be checked). */
static int truncated_endpoint_dst(int fd, const struct sockaddr *sa, socklen_t cap,
				  struct tp_addr *dst)
{
	struct assoc a;
	uint16_t port, idx;

	if (cap < 4 || (sa->sa_family != AF_INET && sa->sa_family != AF_INET6))
		return 0;
	memcpy(&port, (const uint8_t *)sa + 2, 2);
	port = ntohs(port);
	idx = __atomic_load_n(&by_port[port], __ATOMIC_RELAXED);
	if (!idx || !read_slot(idx - 1, &a) || a.direct || a.fd != fd || a.ep.port != port)
		return 0;
	*dst = a.dst;
	return 1;
}

void udp_fix_source(int fd, struct sockaddr *sa, socklen_t cap, socklen_t *len)
{
	struct sockaddr_storage ss;
	struct tp_addr dst;
	socklen_t n;
	int found;

	if (!sa || !len || !tp_config()->active)
		return;
	found = *len > cap ? truncated_endpoint_dst(fd, sa, cap, &dst)
			   : endpoint_dst(fd, sa, *len, &dst);
	if (!found)
		return;
	n = tp_to_sa(&dst, sa->sa_family, dst.family == 4 && sa->sa_family == AF_INET6, &ss);
	if (!n)
		return;
	memcpy(sa, &ss, n < cap ? n : cap);
	*len = n;
}

int udp_peer(int fd, const struct sockaddr *peer, socklen_t len, struct sockaddr_storage *out,
	     socklen_t *outlen)
{
	struct tp_addr dst;

	if (!endpoint_dst(fd, peer, len, &dst))
		return 0;
	*outlen = tp_to_sa(&dst, peer->sa_family, dst.family == 4 && peer->sa_family == AF_INET6,
			   out);
	return *outlen != 0;
}

int udp_oversize_connected(int fd, size_t n)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	struct tp_addr dst;
	static const struct tp_addr v6 = {.family = 6};     /* the smaller limit */
	int e0 = errno;

	if (n <= (size_t)udp_payload_max(&v6) || fd < 0 || fd >= FD_FLAGS ||
	    !__atomic_load_n(&connected_fd[fd], __ATOMIC_RELAXED))
		return 0;
	if (real_getpeername(fd, (struct sockaddr *)&ss, &len) != 0 ||
	    !endpoint_dst(fd, (struct sockaddr *)&ss, len, &dst)) {
		__atomic_store_n(&connected_fd[fd], 0, __ATOMIC_RELAXED);  /* another socket now */
		errno = e0;
		return 0;
	}
	errno = e0;
	return n > (size_t)udp_payload_max(&dst);
}

typedef ssize_t (*send_fn)(int, const void *, size_t, int);

/* send() on a socket connected to an endpoint: a datagram the tailnet cannot carry whole
 * fails here (EMSGSIZE) rather than vanish in the node. */
EXPORT ssize_t send(int fd, const void *buf, size_t n, int flags)
{
	send_fn real = TP_REAL(send_fn, send);

	if (udp_oversize_connected(fd, n)) {
		errno = EMSGSIZE;
		return -1;
	}
	return real(fd, buf, n, flags);
}
