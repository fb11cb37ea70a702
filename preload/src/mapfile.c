/* One way to map the proxy's published tables: only a regular file of our own uid that no one
 * else can write is believed, and it is mapped once per process image. */
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mapfile.h"
#include "real.h"

static const uint8_t *map_file(const struct tp_mapfile *m)
{
	const char *path = getenv(m->env);
	struct stat st;
	void *p;
	int fd;

	if (!path || !*path)
		return NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() ||
	    (st.st_mode & 022) || (size_t)st.st_size < m->size) {
		real_close(fd);
		return NULL;
	}
	p = mmap(NULL, m->size, PROT_READ, MAP_SHARED, fd, 0);
	real_close(fd);
	if (p == MAP_FAILED)
		return NULL;
	if (!m->header_ok(p)) {
		munmap(p, m->size);
		return NULL;
	}
	return p;
}

/* Threads racing here wait for the first (bounded: a signal handler that interrupted the
 * mapper on its own thread goes without a table rather than deadlock). */
const uint8_t *tp_mapfile_get(struct tp_mapfile *m)
{
	int st = __atomic_load_n(&m->state, __ATOMIC_ACQUIRE), zero = 0, i;

	if (st == 2)
		return m->mapped;
	if (__atomic_compare_exchange_n(&m->state, &zero, 1, 0, __ATOMIC_ACQ_REL,
					__ATOMIC_ACQUIRE)) {
		m->mapped = map_file(m);
		__atomic_store_n(&m->state, 2, __ATOMIC_RELEASE);
		return m->mapped;
	}
	for (i = 0; i < 100000; i++) {
		if (__atomic_load_n(&m->state, __ATOMIC_ACQUIRE) == 2)
			return m->mapped;
		sched_yield();
	}
	return NULL;
}
