/* UDP to destinations the proxy routes, for supervised programs: the preload's associations
 * (../src/udp.c), kept here per socket inode (sockets are shared across the supervised
 * processes; fd numbers are not) and destination. The association itself is asked with the
 * preload's request (../src/udpassoc.c) on the program's socket taken with pidfd_getfd:
 * intercept.c then connects that socket to the node's loopback endpoint, or sends the
 * datagram there; udprecv.c shows the destination as the source of what comes back, and
 * intercept.c as the peer.
 *
 * Bounded: SLOTS associations per supervisor, the oldest of a probe window forgotten first (a
 * socket sending there again asks again and finds the node's association still there; a
 * connected socket whose entry was forgotten shows the endpoint's address). An unconnected
 * socket asks again after REASK_S, so one the node ended (its far side failed) is replaced; a
 * connected socket keeps its endpoint and, once that ended, gets ECONNREFUSED from the kernel
 * (the endpoint port is closed), as under the preload. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "seccomp_exec.h"

#define SLOTS 1024
#define PROBE 16
#define REASK_S 10

struct route {
	uint64_t ino;           /* 0: free */
	int64_t asked_ns;
	int direct;             /* the proxy said: send to dst yourself */
	struct tp_addr dst;     /* as sa_to_tp gives it (IPv4-mapped made IPv4) */
	struct tp_addr ep;      /* the node's loopback endpoint */
};

static struct route slots[SLOTS];
static uint16_t by_port[65536];         /* endpoint port -> slot + 1 (checked on use) */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int any;                         /* set once: read without the lock */

int udp_route_any(void)
{
	return __atomic_load_n(&any, __ATOMIC_RELAXED);
}

int udp_routed(const struct tp_addr *dst)
{
	const struct tp_config *c = tp_config();

	return c->active && dst->port != 0 && !tp_goes_direct(c, dst) && !tp_table_direct(dst);
}

static int same_addr(const struct tp_addr *a, const struct tp_addr *b)
{
	return a->family == b->family && a->port == b->port &&
	       memcmp(a->addr, b->addr, a->family == 4 ? 4 : 16) == 0;
}

static unsigned int home_of(uint64_t ino, const struct tp_addr *d)
{
	uint64_t h = ino * 0x9E3779B97F4A7C15ull;
	int i;

	for (i = 0; i < 16; i++)
		h = (h ^ d->addr[i]) * 1099511628211ull;
	h = (h ^ d->port) * 1099511628211ull;
	return (unsigned int)(h >> 32) % SLOTS;
}

/* Under the lock: the slot of (ino, dst), else NULL with *victim where a new one goes (a free
 * slot, else the oldest of the window). */
static struct route *find(uint64_t ino, const struct tp_addr *dst, struct route **victim)
{
	unsigned int home = home_of(ino, dst), k;

	*victim = NULL;
	for (k = 0; k < PROBE; k++) {
		struct route *r = &slots[(home + k) % SLOTS];
		if (r->ino == ino && same_addr(&r->dst, dst))
			return r;
		if (r->ino == 0) {
			if (!*victim || (*victim)->ino != 0)
				*victim = r;
		} else if (!*victim || ((*victim)->ino != 0 && r->asked_ns < (*victim)->asked_ns)) {
			*victim = r;
		}
	}
	return NULL;
}

static void verbose_line(int pid, const struct tp_addr *dst, const struct tp_addr *ep)
{
	struct tp_log l;

	if (!tp_config()->verbose)
		return;
	log_init(&l);
	log_str(&l, "tailproxy: pid ");
	log_num(&l, pid);
	log_str(&l, " UDP to ");
	log_addr(&l, dst);
	log_str(&l, ": through the node's endpoint ");
	log_addr(&l, ep);
	log_flush(&l);
}

int udp_route_for(int pid, int s, int family, const struct tp_addr *dst,
		  struct sockaddr_storage *to, socklen_t *tolen)
{
	uint64_t ino = sock_ino(s);
	struct route *r, *victim, found;
	int fresh = 0, direct, domain = family;
	struct tp_addr ep;

	if (!ino)
		return 0;
	pthread_mutex_lock(&lock);
	r = find(ino, dst, &victim);
	if (r) {
		found = *r;
		fresh = now_ns() - found.asked_ns < (int64_t)REASK_S * 1000000000;
	}
	pthread_mutex_unlock(&lock);
	if (fresh && found.direct) {
		struct tp_table t;

		if (tp_table_read(&t))
			fresh = 0;      /* "direct" from the proxy, yet the table routes it: ask again */
	}
	if (fresh) {
		/* a UDP socket of that family when remembered: no syscall to check it again */
		direct = found.direct;
		ep = found.ep;
	} else {
		domain = udp_domain(s);
		if (domain != family || (family == AF_INET6 && dst->family == 4 &&
					 sock_int(s, IPPROTO_IPV6, IPV6_V6ONLY) != 0))
			return 0;       /* not UDP of that family, or v4-mapped refused: the kernel's
					 * own answer */
		if (udp_assoc_ask(s, domain, dst, &direct, &ep) != 0)
			return -1;
		pthread_mutex_lock(&lock);
		r = find(ino, dst, &victim);
		if (!r)
			r = victim;
		r->ino = ino;
		r->asked_ns = now_ns();
		r->direct = direct;
		r->dst = *dst;
		r->ep = ep;
		if (!direct)
			by_port[ep.port] = (uint16_t)(r - slots + 1);
		pthread_mutex_unlock(&lock);
		if (!direct) {
			routed_socket_add(ino);
			__atomic_store_n(&any, 1, __ATOMIC_RELAXED);
			verbose_line(pid, dst, &ep);
		}
	}
	if (direct)
		return 0;
	*tolen = tp_to_sa(&ep, domain, ep.family == 4 && domain == AF_INET6, to);
	return *tolen ? 1 : 0;
}

int udp_route_source(uint64_t ino, const struct sockaddr *sa, socklen_t len, struct tp_addr *dst)
{
	struct tp_addr src;
	int mapped, found = 0;
	uint16_t idx;

	if (!udp_route_any() || len < sizeof(sa_family_t) ||
	    (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) ||
	    sa_to_tp(sa, len, &src, &mapped) != 0)
		return 0;
	pthread_mutex_lock(&lock);
	idx = by_port[src.port];
	if (idx && slots[idx - 1].ino == ino && !slots[idx - 1].direct &&
	    same_addr(&slots[idx - 1].ep, &src)) {
		*dst = slots[idx - 1].dst;
		found = 1;
	}
	pthread_mutex_unlock(&lock);
	return found;
}
