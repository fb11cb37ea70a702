/* The routing table reader (src/table.c), built into this program.
 *   test_table read                print the table the reader sees: "none", or
 *                                  "gen G flags F" and one "route KIND CIDR" line per route
 *   test_table direct IP           print "direct" or "proxy": the reader's decision for IP
 *   test_table stress THREADS S    THREADS threads read the table for S seconds while
 *                                  it is republished: every copy must be one whole table
 *                                  (the test's writer makes table G hold 1 + G % 64 routes,
 *                                  flags G % 8, each route's address starting with G) */
#include "tptest.h"

#include <pthread.h>
#include <stdint.h>

#include "../src/cidr.c"
#include "../src/mapfile.c"
#include "../src/table.c"

/* table.c closes through the library's libc lookup (real.c), not built in here */
int real_close(int fd)
{
	return close(fd);
}

static void print_table(void)
{
	struct tp_table t;
	char ip[INET6_ADDRSTRLEN];
	uint32_t i;

	if (!tp_table_read(&t)) {
		printf("none\n");
		return;
	}
	printf("gen %llu flags %u\n", (unsigned long long)t.gen, t.flags);
	for (i = 0; i < t.count; i++) {
		const struct tp_route *r = &t.routes[i];
		inet_ntop(r->family == 4 ? AF_INET : AF_INET6, r->addr, ip, sizeof(ip));
		printf("route %u %s/%u\n", r->kind, ip, r->bits);
	}
}

static void print_decision(const char *ip)
{
	struct tp_addr a = {.port = 80};

	if (inet_pton(AF_INET, ip, a.addr) == 1)
		a.family = 4;
	else if (inet_pton(AF_INET6, ip, a.addr) == 1)
		a.family = 6;
	else
		CHECK(0, "bad address %s", ip);
	printf("%s\n", tp_table_direct(&a) ? "direct" : "proxy");
}

struct reader {
	pthread_t th;
	double until;
	unsigned long reads, changes, misses;
	char error[200];
};

/* One whole table G: 1 + G % 64 routes, flags G % 8, every route's first
 * eight address bytes are G (little-endian), the ninth its index. */
static int whole(const struct tp_table *t, char *why, size_t n)
{
	uint32_t i;

	if (t->count != 1 + t->gen % 64 || t->flags != t->gen % 8) {
		snprintf(why, n, "gen %llu: count %u flags %u", (unsigned long long)t->gen,
			 t->count, t->flags);
		return 0;
	}
	for (i = 0; i < t->count; i++) {
		uint64_t g;
		memcpy(&g, t->routes[i].addr, 8);
		if (g != t->gen || t->routes[i].addr[8] != i || t->routes[i].bits != 128 ||
		    t->routes[i].family != 6) {
			snprintf(why, n, "gen %llu: route %u is of table %llu",
				 (unsigned long long)t->gen, i, (unsigned long long)g);
			return 0;
		}
	}
	return 1;
}

static void *read_loop(void *arg)
{
	struct reader *r = arg;
	struct tp_table t;
	uint64_t last = 0;

	while (now_s() < r->until) {
		if (!tp_table_read(&t)) {
			r->misses++;
			continue;
		}
		r->reads++;
		if (!whole(&t, r->error, sizeof(r->error)))
			break;
		if (t.gen < last) {
			snprintf(r->error, sizeof(r->error), "generation went back: %llu after %llu",
				 (unsigned long long)t.gen, (unsigned long long)last);
			break;
		}
		r->changes += t.gen != last;
		last = t.gen;
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
	printf("ok: %d threads, %lu whole reads, %lu changes seen, %lu reads without a table\n",
	       nthreads, reads, changes, misses);
}

int main(int argc, char **argv)
{
	CHECK(argc >= 2, "usage: test_table read|direct IP|stress THREADS SECONDS");
	if (!strcmp(argv[1], "read"))
		print_table();
	else if (!strcmp(argv[1], "direct") && argc == 3)
		print_decision(argv[2]);
	else if (!strcmp(argv[1], "stress") && argc == 4)
		stress(atoi(argv[2]), atof(argv[3]));
	else
		CHECK(0, "unknown mode %s", argv[1]);
	return 0;
}
