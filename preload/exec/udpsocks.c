/* The datagram sockets whose receives the supervisor serves (udprecv.c), by socket inode
 * (shared across the supervised processes; fd numbers are not): those whose port-53 traffic
 * went to the responder, with the address the program named (the source its resolver expects
 * on the answers), and those with a UDP association through the node (udproute.c: their
 * endpoints' datagrams show the destination). Bounded: when full, a new entry takes the place
 * of an old one (that socket's datagrams then show the responder's or endpoint's address, as
 * without this table). */
#define _GNU_SOURCE
#include <pthread.h>
#include <string.h>

#include "seccomp_exec.h"

#define SLOTS 1024
#define PROBE 16

struct slot {
	uint64_t ino;           /* 0: free */
	int served;             /* SERVED_DNS | SERVED_ROUTED */
	struct tp_addr asked;   /* SERVED_DNS: the nameserver the program asked */
	int mapped;
};

static struct slot slots[SLOTS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int any;                 /* set once: read without the lock, a hint that spares a lookup */

int served_any(void)
{
	return __atomic_load_n(&any, __ATOMIC_RELAXED);
}

static struct slot *find(uint64_t ino, int for_insert)
{
	size_t home = (size_t)(ino * 0x9E3779B97F4A7C15ull >> 54) % SLOTS, i;

	for (i = 0; i < PROBE; i++) {
		struct slot *s = &slots[(home + i) % SLOTS];
		if (s->ino == ino || (for_insert && s->ino == 0))
			return s;
	}
	return for_insert ? &slots[home] : NULL;
}

static void add(uint64_t ino, int served, const struct tp_addr *asked, int mapped)
{
	struct slot *s;

	if (!ino)
		return;
	pthread_mutex_lock(&lock);
	s = find(ino, 1);
	if (s->ino != ino)
		memset(s, 0, sizeof(*s));
	s->ino = ino;
	s->served |= served;
	if (asked) {
		s->asked = *asked;
		s->mapped = mapped;
	}
	pthread_mutex_unlock(&lock);
	if (!served_any())
		__atomic_store_n(&any, 1, __ATOMIC_RELAXED);
}

void dns_socket_add(uint64_t ino, const struct tp_addr *asked, int mapped)
{
	add(ino, SERVED_DNS, asked, mapped);
}

void routed_socket_add(uint64_t ino)
{
	add(ino, SERVED_ROUTED, NULL, 0);
}

int served_socket(uint64_t ino, struct tp_addr *asked, int *mapped)
{
	struct slot *s;
	int served = 0;

	pthread_mutex_lock(&lock);
	s = ino ? find(ino, 0) : NULL;
	if (s) {
		served = s->served;
		*asked = s->asked;
		*mapped = s->mapped;
	}
	pthread_mutex_unlock(&lock);
	return served;
}
