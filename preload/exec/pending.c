/* Non-blocking connects handed over and not yet settled, by socket inode (sockets are shared
 * across the supervised processes; fd numbers are not), with the proxy's token for their
 * outcome: what getsockopt(SO_ERROR) needs to give the real errno. Bounded: when full, a new
 * entry takes the place of an old one (that socket then shows the kernel's SO_ERROR). */
#define _GNU_SOURCE
#include <pthread.h>
#include <string.h>

#include "seccomp_exec.h"

#define SLOTS 4096
#define PROBE 16

struct slot {
	uint64_t ino;           /* 0: free */
	uint64_t token;
};

static struct slot slots[SLOTS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int entries;             /* read without the lock: a hint that spares a lookup */

int pending_any(void)
{
	return __atomic_load_n(&entries, __ATOMIC_RELAXED) > 0;
}

static struct slot *find(uint64_t ino, int for_insert)
{
	size_t home = (size_t)(ino * 0x9E3779B97F4A7C15ull >> 52) % SLOTS, i;

	for (i = 0; i < PROBE; i++) {
		struct slot *s = &slots[(home + i) % SLOTS];
		if (s->ino == ino || (for_insert && s->ino == 0))
			return s;
	}
	return for_insert ? &slots[home] : NULL;
}

void pending_add(uint64_t ino, uint64_t token)
{
	struct slot *s;

	if (!ino)
		return;
	pthread_mutex_lock(&lock);
	s = find(ino, 1);
	if (s->ino != ino)
		__atomic_store_n(&entries, entries + (s->ino == 0), __ATOMIC_RELAXED);
	s->ino = ino;
	s->token = token;
	pthread_mutex_unlock(&lock);
}

int pending_token(uint64_t ino, uint64_t *token)
{
	struct slot *s;
	int found = 0;

	pthread_mutex_lock(&lock);
	s = ino ? find(ino, 0) : NULL;
	if (s) {
		*token = s->token;
		found = 1;
	}
	pthread_mutex_unlock(&lock);
	return found;
}

void pending_drop(uint64_t ino)
{
	struct slot *s;

	pthread_mutex_lock(&lock);
	s = ino ? find(ino, 0) : NULL;
	if (s) {
		memset(s, 0, sizeof(*s));
		__atomic_store_n(&entries, entries - 1, __ATOMIC_RELAXED);
	}
	pthread_mutex_unlock(&lock);
}
