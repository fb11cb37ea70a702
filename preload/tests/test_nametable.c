/* The name table reader (src/nametable.c), built into this program; the name service it falls
 * back to is a stand-in that answers "service" (so a test sees which one answered).
 *   test_nametable lookup NAME FAMILY   print the answer tp_name_lookup() gives:
 *                                       "table|service err=E flags=F name=N addrs=A,.. aliases=X,.."
 *   test_nametable stress THREADS S     THREADS threads look "stress" up for S seconds while the
 *                                       table is republished: every answer must be whole (the
 *                                       test's writer makes table G answer canon gG.example,
 *                                       1 + G % 16 addresses 10.x.y.i with x.y = G % 65536, and
 *                                       the alias aG) */
#include "tptest.h"

#include <pthread.h>
#include <stdint.h>

#include "../src/mapfile.c"
#include "../src/nametable.c"

/* nametable.c closes through the library's libc lookup (real.c), not built in here */
int real_close(int fd)
{
	return close(fd);
}

/* ---- stand-ins for the rest of the library ---- */
static struct tp_dns_config dns_on = {.active = 1};
static struct tp_config cfg;
static unsigned long service_calls;

const struct tp_dns_config *tp_dns(void)
{
	return &dns_on;
}

const struct tp_config *tp_config(void)
{
	return &cfg;
}

int tp_resolve(const char *name, int family, int idn, struct tp_names *out)
{
	(void)family;
	(void)idn;
	__atomic_add_fetch(&service_calls, 1, __ATOMIC_RELAXED);
	memset(out, 0, sizeof(*out));
	snprintf(out->name, sizeof(out->name), "service:%s", name);
	out->naddr = 1;
	out->addr[0].family = 4;
	return 0;
}

void tp_names_log(const char *what, const char *name, int err)
{
	fprintf(stderr, "%s %s: %d (service)\n", what, name, err);
}

void log_init(struct tp_log *l)
{
	l->n = 0;
}

void log_str(struct tp_log *l, const char *s)
{
	size_t n = strlen(s);

	if (n > sizeof(l->buf) - 1 - l->n)
		n = sizeof(l->buf) - 1 - l->n;
	memcpy(l->buf + l->n, s, n);
	l->n += n;
}

void log_errno(struct tp_log *l, int err)
{
	log_str(l, strerror(err));
}

void log_flush(struct tp_log *l)
{
	l->buf[l->n] = 0;
	fprintf(stderr, "%s\n", l->buf);
}

/* ---- modes ---- */
static void print_answer(const char *name, int family)
{
	struct tp_names nm;
	char ip[INET6_ADDRSTRLEN];
	const char *al;
	int err = tp_name_lookup(name, family, 0, &nm), i;

	if (nm.flags & TP_RES_FROM_TABLE)
		printf("table err=%d flags=%d name=%s addrs=", err, nm.flags & ~TP_RES_FROM_TABLE,
		       nm.name);
	else
		printf("service err=%d name=%s addrs=", err, nm.name);
	for (i = 0; i < nm.naddr; i++) {
		inet_ntop(nm.addr[i].family == 4 ? AF_INET : AF_INET6, nm.addr[i].addr, ip,
			  sizeof(ip));
		printf("%s%s", i ? "," : "", ip);
	}
	printf(" aliases=");
	for (i = 0, al = nm.aliases; i < nm.naliases; i++, al += strlen(al) + 1)
		printf("%s%s", i ? "," : "", al);
	printf("\n");
	cfg.verbose = 1;
	tp_name_lookup_log(name, err, &nm);
}

struct reader {
	pthread_t th;
	double until;
	unsigned long reads, changes, misses;
	char error[200];
};

/* One whole answer of table G (see the top of the file). */
static int whole(const struct tp_names *nm, unsigned long *gen, char *why, size_t n)
{
	unsigned long g;
	char want[64];
	int i;

	if (sscanf(nm->name, "g%lu.example", &g) != 1) {
		snprintf(why, n, "canonical name %.60s", nm->name);
		return 0;
	}
	if (nm->naddr != (int)(1 + g % 16) || nm->naliases != 1 ||
	    !(nm->flags & TP_RES_FROM_TABLE)) {
		snprintf(why, n, "gen %lu: %d addresses, %d aliases", g, nm->naddr, nm->naliases);
		return 0;
	}
	for (i = 0; i < nm->naddr; i++) {
		const uint8_t *a = nm->addr[i].addr;
		if (nm->addr[i].family != 4 || a[0] != 10 || a[1] != (g >> 8) % 256 ||
		    a[2] != g % 256 || a[3] != i) {
			snprintf(why, n, "gen %lu: address %d is %u.%u.%u.%u", g, i, a[0], a[1],
				 a[2], a[3]);
			return 0;
		}
	}
	snprintf(want, sizeof(want), "a%lu", g);
	if (strcmp(nm->aliases, want) != 0) {
		snprintf(why, n, "gen %lu: alias %.60s", g, nm->aliases);
		return 0;
	}
	*gen = g;
	return 1;
}

static void *read_loop(void *arg)
{
	struct reader *r = arg;
	struct tp_names nm;
	unsigned long last = 0, g;

	while (now_s() < r->until) {
		if (tp_nametable_answer("Stress.", 4, &nm) != 0) {
			r->misses++;
			continue;
		}
		r->reads++;
		if (!whole(&nm, &g, r->error, sizeof(r->error)))
			break;
		if (g < last) {
			snprintf(r->error, sizeof(r->error), "went back: table %lu after %lu", g, last);
			break;
		}
		r->changes += g != last;
		last = g;
	}
	return NULL;
}

static void stress(int nthreads, double seconds)
{
	struct reader *rs = calloc(nthreads, sizeof(*rs));
	unsigned long reads = 0, changes = 0, misses = 0;
	int i;

	CHECK(rs, "calloc");
	for (i = 0; i < nthreads; i++) {
		rs[i].until = now_s() + seconds;
		CHECK(pthread_create(&rs[i].th, NULL, read_loop, &rs[i]) == 0, "pthread_create");
	}
	for (i = 0; i < nthreads; i++) {
		pthread_join(rs[i].th, NULL);
		CHECK(!rs[i].error[0], "thread %d: %s", i, rs[i].error);
		reads += rs[i].reads;
		changes += rs[i].changes;
		misses += rs[i].misses;
	}
	free(rs);
	printf("ok: %d threads, %lu whole answers, %lu changes seen, %lu misses\n", nthreads,
	       reads, changes, misses);
}

int main(int argc, char **argv)
{
	CHECK(argc >= 2, "usage: test_nametable lookup NAME FAMILY|stress THREADS SECONDS");
	if (!strcmp(argv[1], "lookup") && argc == 4)
		print_answer(argv[2], atoi(argv[3]));
	else if (!strcmp(argv[1], "stress") && argc == 4)
		stress(atoi(argv[2]), atof(argv[3]));
	else
		CHECK(0, "unknown mode %s", argv[1]);
	return 0;
}
