/* The proxy's routing table (docs/CHANNEL.md, "The routing table"): which
 * destinations the proxy would only dial directly, so connect() can make
 * them itself. Published by the proxy in a file of the run directory
 * (TAILPROXY_TABLE), mapped read-only and shared once per process image
 * (constructor or first use; fork inherits it, exec maps it again); the fd is
 * closed at once. No lock is taken: the file holds two slots and a generation
 * word, the proxy writes the slot the generation does not point at and then
 * the generation, and a reader keeps a copy only when the slot's own
 * generation, the generation word read before and after the copy, and the
 * slot's checksum all agree. Anything else (no table, a malformed one, a copy
 * that never settles) means "hand it to the proxy", as without a table. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mapfile.h"
#include "tailproxy.h"

#define HEADER_SIZE 64
#define SLOT_SIZE ((size_t)sizeof(struct tp_table))
#define FILE_SIZE (HEADER_SIZE + 2 * SLOT_SIZE)
#define READ_TRIES 64

_Static_assert(sizeof(struct tp_route) == 20, "route entry is 20 bytes in the file");
_Static_assert(sizeof(struct tp_table) == 24 + 20 * TP_TABLE_MAX, "slot layout is the file's");
_Static_assert((HEADER_SIZE + sizeof(struct tp_table)) % 8 == 0, "slot generations stay aligned");


/* The header as the proxy wrote it before handing out the path. */
static int header_ok(const uint8_t *b)
{
	uint32_t magic, version, max, slot;

	memcpy(&magic, b, 4);
	memcpy(&version, b + 4, 4);
	memcpy(&max, b + 16, 4);
	memcpy(&slot, b + 20, 4);
	return magic == TP_TABLE_MAGIC && version == TP_TABLE_VERSION && max == TP_TABLE_MAX &&
	       slot == SLOT_SIZE;
}

static struct tp_mapfile file = {"TAILPROXY_TABLE", FILE_SIZE, header_ok, NULL, 0};

static const uint8_t *table_file(void)
{
	return tp_mapfile_get(&file);
}

void tp_table_init(void)
{
	table_file();
}

/* FNV-1a, 64 bits, over the slot's generation, flags, count and its `count`
 * routes: everything but the checksum itself. */
static uint64_t slot_sum(const struct tp_table *t)
{
	const uint8_t *p = (const uint8_t *)t;
	uint64_t h = 0xcbf29ce484222325ULL;
	size_t i, end = 24 + (size_t)t->count * sizeof(struct tp_route);

	for (i = 0; i < end; i++) {
		if (i == 8)
			i = 16;         /* skip the checksum field */
		h = (h ^ p[i]) * 0x100000001b3ULL;
	}
	return h;
}

int tp_table_read(struct tp_table *t)
{
	const uint8_t *b = table_file();
	const uint64_t *genp;
	int i;

	if (!b)
		return 0;
	genp = (const uint64_t *)(b + 8);
	for (i = 0; i < READ_TRIES; i++) {
		uint64_t g = __atomic_load_n(genp, __ATOMIC_ACQUIRE);
		const uint8_t *slot = b + HEADER_SIZE + (g & 1) * SLOT_SIZE;
		size_t n;

		if (g == 0)
			return 0;               /* nothing published yet */
		memcpy(t, slot, 24);
		n = t->count <= TP_TABLE_MAX ? t->count : 0;
		memcpy(t->routes, slot + 24, n * sizeof(struct tp_route));
		/* the copy is done before the generation is looked at again */
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (__atomic_load_n(genp, __ATOMIC_RELAXED) != g)
			continue;               /* republished meanwhile: the slot may be torn */
		if (t->gen != g || t->count > TP_TABLE_MAX || slot_sum(t) != t->sum) {
			if (i > 8)
				sched_yield();  /* the proxy may be between its two writes */
			continue;
		}
		return 1;
	}
	return 0;
}

/* Hand over unless the table says the proxy would dial it directly itself:
 * no exit node, not --tailnet-only, no exit-node switch under way, not in a
 * prefix the proxy routes (tailnet, accepted routes, placeholders). A bypass
 * prefix is direct in every mode, as TAILPROXY_BYPASS is. */
int tp_table_direct(const struct tp_addr *a)
{
	struct tp_table t;
	uint32_t i;
	int routed = 0;

	if (!tp_table_read(&t))
		return 0;
	for (i = 0; i < t.count; i++) {
		const struct tp_route *r = &t.routes[i];
		struct tp_cidr c = {.family = r->family, .bits = r->bits};

		if ((r->family != 4 && r->family != 6) || r->bits > (r->family == 4 ? 32 : 128))
			return 0;       /* malformed: hand over */
		memcpy(c.addr, r->addr, 16);
		if (!tp_cidr_match(&c, a))
			continue;
		if (r->kind == TP_ROUTE_BYPASS)
			return 1;
		routed = 1;             /* TP_ROUTE_PROXY, or a kind unknown here */
	}
	if (t.flags & ~(uint32_t)TP_TABLE_KNOWN_FLAGS)
		return 0;
	if (t.flags & (TP_TABLE_EXIT_NODE | TP_TABLE_TAILNET_ONLY | TP_TABLE_HAND_OVER_ALL))
		return 0;
	return !routed;
}
