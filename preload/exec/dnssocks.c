/* Sockets whose port-53 traffic the supervisor sent to the responder, by socket inode (shared
 * across the supervised processes; fd numbers are not), with the address the program named:
 * the source its resolver expects on the answers (recvfrom/recvmsg, dnsrecv.c). Bounded: when
 * full, a new entry takes the place of an old one (that socket's answers then show the
 * responder's address, as without this table). */
#define _GNU_SOURCE
#include <pthread.h>
#include <string.h>

#include "seccomp_exec.h"

#define SLOTS 1024
#define PROBE 16

struct slot {
	uint64_t ino;           /* 0: free */
	struct tp_addr asked;
	int mapped;
};

static struct slot slots[SLOTS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int any;                 /* set once: read without the lock, a hint that spares a lookup */

int dns_socket_any(void)
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

void dns_socket_add(uint64_t ino, const struct tp_addr *asked, int mapped)
{
	struct slot *s;

	if (!ino)
		return;
	pthread_mutex_lock(&lock);
	s = find(ino, 1);
	s->ino = ino;
	s->asked = *asked;
	s->mapped = mapped;
	pthread_mutex_unlock(&lock);
	__atomic_store_n(&any, 1, __ATOMIC_RELAXED);
}

int dns_socket_asked(uint64_t ino, struct tp_addr *asked, int *mapped)
{
	struct slot *s;
	int found = 0;

	pthread_mutex_lock(&lock);
	s = ino ? find(ino, 0) : NULL;
	if (s) {
		*asked = s->asked;
		*mapped = s->mapped;
		found = 1;
	}
	pthread_mutex_unlock(&lock);
	return found;
}
