/* What we know about our sockets, indexed by fd: a static array (no malloc,
 * usable in signal handlers and after fork). Each slot is a small seqlock of
 * atomics so a reader on another thread never sees a torn entry. An entry is
 * only believed while the fd still refers to the same socket (inode), so a
 * close/dup2/reuse of the fd number makes it stale, never wrong. */
#define _GNU_SOURCE
#include <sched.h>
#include <string.h>
#include <sys/stat.h>

#include "tailproxy.h"

#define FDT_SIZE 65536

struct slot {
	uint32_t seq;           /* odd while being written */
	uint32_t meta;          /* state | mapped << 8 | family << 16 */
	uint64_t ino;
	uint64_t token;
	uint32_t ports;         /* dst port | lport << 16 */
	uint64_t a0, a1;        /* dst address bytes */
};

static struct slot table[FDT_SIZE];

uint64_t sock_ino(int fd)
{
	struct stat st;

	if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode))
		return 0;
	return (uint64_t)st.st_ino;
}

static struct slot *slot_of(int fd)
{
	return fd >= 0 && fd < FDT_SIZE ? &table[fd] : NULL;
}

/* Take the slot for writing; bounded so a signal handler that interrupted a
 * writer of the same slot on its own thread gives up instead of hanging. */
static int wlock(struct slot *s)
{
	int i;

	for (i = 0; i < 1000; i++) {
		uint32_t q = __atomic_load_n(&s->seq, __ATOMIC_RELAXED);
		if (!(q & 1) && __atomic_compare_exchange_n(&s->seq, &q, q + 1, 0,
							     __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
			return 1;
		sched_yield();
	}
	return 0;
}

static void wunlock(struct slot *s)
{
	__atomic_add_fetch(&s->seq, 1, __ATOMIC_RELEASE);
}

#define ST(field, v) __atomic_store_n(&s->field, (v), __ATOMIC_RELAXED)
#define LD(field) __atomic_load_n(&s->field, __ATOMIC_RELAXED)

void fdt_set(int fd, const struct fd_info *fi)
{
	struct slot *s = slot_of(fd);
	uint64_t a[2];

	if (!s || !wlock(s))
		return;
	memcpy(a, fi->dst.addr, 16);
	ST(ino, fi->ino);
	ST(token, fi->token);
	ST(meta, (uint32_t)fi->state | (uint32_t)(fi->mapped ? 1 : 0) << 8 |
			 (uint32_t)fi->dst.family << 16);
	ST(ports, (uint32_t)fi->dst.port | (uint32_t)fi->lport << 16);
	ST(a0, a[0]);
	ST(a1, a[1]);
	wunlock(s);
}

int fdt_get(int fd, struct fd_info *fi)
{
	struct slot *s = slot_of(fd);
	uint64_t ino, a[2];
	int i;

	if (!s)
		return 0;
	for (i = 0; i < 1000; i++) {
		uint32_t q1 = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE), q2, meta, ports;

		if (q1 & 1) {
			sched_yield();
			continue;
		}
		fi->ino = LD(ino);
		fi->token = LD(token);
		meta = LD(meta);
		ports = LD(ports);
		a[0] = LD(a0);
		a[1] = LD(a1);
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		q2 = __atomic_load_n(&s->seq, __ATOMIC_RELAXED);
		if (q1 != q2)
			continue;
		if (fi->ino == 0 || (meta & 0xff) == 0)
			return 0;
		ino = sock_ino(fd);
		if (ino != fi->ino)
			return 0;
		fi->state = (int)(meta & 0xff);
		fi->mapped = (int)(meta >> 8 & 1);
		fi->dst.family = (uint8_t)(meta >> 16);
		fi->dst.port = (uint16_t)ports;
		fi->lport = (uint16_t)(ports >> 16);
		memcpy(fi->dst.addr, a, 16);
		return 1;
	}
	return 0;
}

void fdt_update(int fd, uint64_t ino, int state, uint16_t lport)
{
	struct slot *s = slot_of(fd);

	if (!s || !wlock(s))
		return;
	if (LD(ino) == ino) {
		ST(meta, (LD(meta) & ~0xffu) | (uint32_t)state);
		ST(ports, (LD(ports) & 0xffff) | (uint32_t)lport << 16);
	}
	wunlock(s);
}

void fdt_clear(int fd)
{
	struct slot *s = slot_of(fd);

	if (!s || !wlock(s))
		return;
	ST(ino, 0);
	ST(meta, 0);
	wunlock(s);
}
