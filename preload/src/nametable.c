/* The proxy's name table (src/tailproxy/resolver/nametable.py has the layout): /etc/hosts
 * names and the MagicDNS names of known peers, answered in the program exactly as the name
 * service would answer them, without a round trip. Only a name the table does not hold goes
 * to the name service.
 *
 * Published by the proxy in a file of the run directory (TAILPROXY_NAMES), mapped read-only
 * once per process image (constructor or first use; fork inherits it, exec maps it again); the
 * fd is closed at once. No lock, no thread, no fd kept: the file holds two slots and a
 * generation word; the proxy writes the slot the generation does not point at, then the
 * generation. A reader finds its record in place, copies it, and keeps the copy only when the
 * generation is unchanged after the copy and the slot header and record carry that generation
 * with matching checksums. A torn or stale read, a malformed table, or a hosts file that is no
 * longer the one the table was taken from (stat() per lookup, as glibc reads the file per
 * lookup) all mean "ask the name service", which is always right. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nametable.h"
#include "mapfile.h"
#include "real.h"

#define MAGIC 0x544E5054u               /* "TPNT" */
#define VERSION 1u
#define NBUCKETS 16384u
#define MAX_RECORDS 8192u
#define POOL_SIZE (1u << 20)
#define HEADER_SIZE 512
#define PATH_OFF 34
#define PATH_MAX_LEN (HEADER_SIZE - PATH_OFF)
#define SLOT_HEADER 64
#define ENTRY_SIZE 16
#define BUCKETS_OFF SLOT_HEADER
#define ENTRIES_OFF (BUCKETS_OFF + 4 * NBUCKETS)
#define POOL_OFF (ENTRIES_OFF + ENTRY_SIZE * MAX_RECORDS)
#define SLOT_SIZE ((size_t)POOL_OFF + POOL_SIZE)
#define FILE_SIZE (HEADER_SIZE + 2 * SLOT_SIZE)
#define HOSTS_PRESENT 1u
#define READ_TRIES 32

#define REC_HEAD 24
#define REC_ADDR 20
#define REC_MAX (REC_HEAD + 253 + 255 + TP_RES_MAX_ADDRS * REC_ADDR + TP_ALIASES_FIELD)

struct slot_head {              /* as in the file */
	uint64_t gen;
	uint64_t dev, ino;
	int64_t size, mtime_ns;
	uint32_t flags, count, pool_used, zero;
	uint64_t sum;
};
_Static_assert(sizeof(struct slot_head) == SLOT_HEADER, "slot header is 64 bytes");

struct entry {
	uint32_t hash, next, off, len;
};
_Static_assert(sizeof(struct entry) == ENTRY_SIZE, "record entry is 16 bytes");

static char hosts_path[PATH_MAX_LEN + 1];

static uint64_t fnv64(const uint8_t *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	while (n--)
		h = (h ^ *p++) * 0x100000001b3ULL;
	return h;
}

static int header_ok(const uint8_t *b)
{
	uint32_t v[6];
	uint16_t plen;

	memcpy(v, b, 8);
	memcpy(v + 2, b + 16, 16);
	memcpy(&plen, b + 32, 2);
	if (v[0] != MAGIC || v[1] != VERSION || v[2] != NBUCKETS || v[3] != MAX_RECORDS ||
	    v[4] != POOL_SIZE || v[5] != SLOT_SIZE || plen == 0 || plen > PATH_MAX_LEN)
		return 0;
	memcpy(hosts_path, b + PATH_OFF, plen);
	hosts_path[plen] = 0;
	return strlen(hosts_path) == plen && hosts_path[0] == '/';
}

static struct tp_mapfile file = {"TAILPROXY_NAMES", FILE_SIZE, header_ok, NULL, 0};

static const uint8_t *table_file(void)
{
	return tp_mapfile_get(&file);
}

__attribute__((constructor)) static void nametable_init(void)
{
	int e = errno;

	if (tp_dns()->active)
		table_file();
	errno = e;
}

/* The key the name service looks names up by: lower case, one trailing dot dropped. Only
 * plain ASCII is taken (the service lowers Unicode its own way, and IDN applies to non-ASCII
 * only); a name ending in two dots is invalid there. Its length, or -1. */
static int name_key(const char *name, char *key)
{
	size_t n = strlen(name), i;

	if (n && name[n - 1] == '.')
		n--;
	if (n == 0 || n > 253 || name[n - 1] == '.')
		return -1;
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)name[i];
		if (c >= 0x80)
			return -1;
		key[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
	}
	return (int)n;
}

/* The hosts file is still the one the table's answers were taken from. */
static int hosts_unchanged(const struct slot_head *h)
{
	struct stat st;
	int e = errno, have = stat(hosts_path, &st) == 0;

	errno = e;
	if (!(h->flags & HOSTS_PRESENT))
		return !have;
	return have && (uint64_t)st.st_dev == h->dev && (uint64_t)st.st_ino == h->ino &&
	       (int64_t)st.st_size == h->size &&
	       (int64_t)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec == h->mtime_ns;
}

/* Finds (key, version) in the slot, in place, and copies its record into rec: its length, or
 * 0. The slot may be rewritten meanwhile: every offset is bounded, nothing is trusted until
 * the caller has checked the generation and the checksums. */
static size_t find_record(const uint8_t *slot, uint32_t hash, const char *key, int n,
			  int version, uint8_t *rec)
{
	const uint8_t *pool = slot + POOL_OFF;
	uint32_t idx, steps;

	memcpy(&idx, slot + BUCKETS_OFF + 4 * (hash & (NBUCKETS - 1)), 4);
	for (steps = 0; idx && idx <= MAX_RECORDS && steps < MAX_RECORDS; steps++) {
		struct entry e;

		memcpy(&e, slot + ENTRIES_OFF + (size_t)ENTRY_SIZE * (idx - 1), sizeof(e));
		if (e.hash == hash && e.len >= REC_HEAD && e.len <= REC_MAX && e.off <= POOL_SIZE &&
		    e.len <= POOL_SIZE - e.off && pool[e.off + 16] == version &&
		    pool[e.off + 20] == n && (size_t)REC_HEAD + n <= e.len &&
		    memcmp(pool + e.off + REC_HEAD, key, (size_t)n) == 0) {
			memcpy(rec, pool + e.off, e.len);
			return e.len;
		}
		idx = e.next;
	}
	return 0;
}

/* A checked record into *out: 0 or ENODATA; -1 if malformed. */
static int record_answer(const uint8_t *rec, size_t len, struct tp_names *out)
{
	int naddr = rec[18], nal = rec[19], klen = rec[20], clen = rec[21], i;
	uint16_t alen;
	const uint8_t *p;
	size_t off;

	memcpy(&alen, rec + 22, 2);
	if (naddr > TP_RES_MAX_ADDRS || alen > TP_ALIASES_FIELD ||
	    (size_t)REC_HEAD + klen + clen + (size_t)naddr * REC_ADDR + alen > len)
		return -1;
	memset(out, 0, sizeof(*out));
	out->flags = rec[17] | TP_RES_FROM_TABLE;
	if (naddr == 0)
		return ENODATA;
	p = rec + REC_HEAD + klen;
	memcpy(out->name, p, (size_t)clen);     /* clen <= 255: out->name has 256 */
	p += clen;
	for (i = 0; i < naddr; i++, p += REC_ADDR) {
		struct tp_addr *a = &out->addr[out->naddr];

		a->family = p[0];
		memcpy(&a->port, p + 2, 2);
		memcpy(a->addr, p + 4, 16);
		if (a->family == 4 || a->family == 6)
			out->naddr++;
		else
			memset(a, 0, sizeof(*a));
	}
	memcpy(out->aliases, p, alen);
	for (off = 0; out->naliases < nal && off < alen; out->naliases++) {
		const void *z = memchr(out->aliases + off, 0, alen - off);
		if (!z)
			break;
		off = (size_t)((const char *)z - out->aliases) + 1;
	}
	return out->naddr ? 0 : ENODATA;
}

int tp_nametable_answer(const char *name, int family, struct tp_names *out)
{
	const uint8_t *b = table_file();
	const uint64_t *genp;
	char key[254];
	uint8_t rec[REC_MAX];
	uint32_t hash = 0x811c9dc5u;
	int n, i;

	if (!b || (family != 0 && family != 4 && family != 6))
		return -1;
	n = name_key(name, key);
	if (n < 0)
		return -1;
	for (i = 0; i < n; i++)
		hash = (hash ^ (uint8_t)key[i]) * 0x01000193u;
	hash = (hash ^ (uint8_t)family) * 0x01000193u;
	genp = (const uint64_t *)(b + 8);
	for (i = 0; i < READ_TRIES; i++) {
		uint64_t g = __atomic_load_n(genp, __ATOMIC_ACQUIRE), sum;
		const uint8_t *slot = b + HEADER_SIZE + (g & 1) * SLOT_SIZE;
		struct slot_head h;
		size_t len;

		if (g == 0)
			return -1;              /* nothing published yet */
		memcpy(&h, slot, sizeof(h));
		len = find_record(slot, hash, key, n, family, rec);
		/* the copies are done before the generation is looked at again */
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (__atomic_load_n(genp, __ATOMIC_RELAXED) != g)
			continue;               /* republished meanwhile: the copies may be torn */
		if (h.gen != g || fnv64((const uint8_t *)&h, SLOT_HEADER - 8) != h.sum) {
			if (i > 8)
				sched_yield();  /* the proxy may be between its two writes */
			continue;
		}
		if (!hosts_unchanged(&h))
			return -1;              /* edited since: the name service reads it again */
		if (len == 0)
			return -1;              /* not a name the table knows */
		memcpy(&sum, rec + 8, 8);
		if (memcmp(rec, &g, 8) != 0 || fnv64(rec + 16, len - 16) != sum)
			continue;               /* this record was being rewritten */
		return record_answer(rec, len, out);
	}
	return -1;
}

int tp_name_lookup(const char *name, int family, int idn, struct tp_names *out)
{
	int r = tp_nametable_answer(name, family, out);

	return r >= 0 ? r : tp_resolve(name, family, idn, out);
}

void tp_name_lookup_log(const char *name, int err, const struct tp_names *nm)
{
	struct tp_log l;

	if (!(nm->flags & TP_RES_FROM_TABLE)) {
		tp_names_log("lookup", name, err);
		return;
	}
	if (!tp_config()->verbose)
		return;
	log_init(&l);
	log_str(&l, "tailproxy: lookup ");
	log_str(&l, name);
	log_str(&l, ": ");
	if (err == 0)
		log_str(&l, "answered from the name table");
	else
		log_errno(&l, err);
	log_str(&l, err == 0 ? "" : " (from the name table)");
	log_flush(&l);
}
