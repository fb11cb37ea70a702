/* Environment: TAILPROXY_SOCKET, TAILPROXY_BYPASS, TAILPROXY_VERBOSE, TAILPROXY_PARK.
 * Read once per process image (constructor, or the first hook call if that
 * comes earlier); fork children inherit the parsed copy, exec re-reads. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "tailproxy.h"

static struct tp_config cfg;
static int cfg_state;           /* 0 unread, 1 being read, 2 ready */

/* Loopback and the unspecified address (which means "this host") never
 * leave the machine, so they are not the proxy's business. */
int tp_goes_direct(const struct tp_config *c, const struct tp_addr *a)
{
	static const uint8_t zero[16], one[16] = {[15] = 1};

	if (a->family == 4) {
		if (a->addr[0] == 127)
			return 1;
		if (memcmp(a->addr, zero, 4) == 0)
			return 1;
	} else {
		if (memcmp(a->addr, one, 16) == 0 || memcmp(a->addr, zero, 16) == 0)
			return 1;
	}
	return tp_bypassed(c, a);
}

int tp_bypassed(const struct tp_config *c, const struct tp_addr *a)
{
	int i;

	for (i = 0; i < c->nbypass; i++)
		if (tp_cidr_match(&c->bypass[i], a))
			return 1;
	return 0;
}

static void warn_bad_cidr(const char *s, size_t n)
{
	struct tp_log l;
	char tmp[80];

	if (n > sizeof(tmp) - 1)
		n = sizeof(tmp) - 1;
	memcpy(tmp, s, n);
	tmp[n] = 0;
	log_init(&l);
	log_str(&l, "tailproxy: ignoring bad TAILPROXY_BYPASS entry '");
	log_str(&l, tmp);
	log_str(&l, "'");
	log_flush(&l);
}

/* "PORT4,PORT6": 127.0.0.1:PORT4 and [::1]:PORT6; either may be 0 or missing. */
static void parse_park(const char *s, struct tp_config *c)
{
	long p4 = 0, p6 = 0;

	if (!s)
		return;
	while (*s >= '0' && *s <= '9' && p4 < 65536)
		p4 = p4 * 10 + (*s++ - '0');
	if (*s == ',') {
		s++;
		while (*s >= '0' && *s <= '9' && p6 < 65536)
			p6 = p6 * 10 + (*s++ - '0');
	}
	if (*s)
		return;                 /* malformed: no fast path */
	if (p4 > 0 && p4 < 65536) {
		c->park4.sin_family = AF_INET;
		c->park4.sin_port = htons((uint16_t)p4);
		c->park4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	}
	if (p6 > 0 && p6 < 65536) {
		c->park6.sin6_family = AF_INET6;
		c->park6.sin6_port = htons((uint16_t)p6);
		c->park6.sin6_addr = in6addr_loopback;
	}
}

static void parse(struct tp_config *c)
{
	const char *path = getenv("TAILPROXY_SOCKET");
	const char *bp = getenv("TAILPROXY_BYPASS");
	const char *v = getenv("TAILPROXY_VERBOSE");
	const char *park = getenv("TAILPROXY_PARK");

	memset(c, 0, sizeof(*c));
	if (!path || !*path)
		return;
	c->active = 1;
	c->path_len = strlen(path);
	if (c->path_len > TP_PATH_MAX)
		c->path_len = TP_PATH_MAX;     /* too long: chan reports ENAMETOOLONG */
	memcpy(c->path, path, c->path_len);
	c->path[c->path_len] = 0;
	if (strlen(path) > TP_PATH_MAX)
		c->path_len = TP_PATH_MAX + 1;
	c->verbose = v && v[0] == '1' && v[1] == 0;
	parse_park(park, c);
	while (bp && *bp) {
		const char *end = strchr(bp, ',');
		size_t n = end ? (size_t)(end - bp) : strlen(bp);
		size_t k = 0;

		while (k < n && (bp[k] == ' ' || bp[k] == '\t'))
			k++;
		if (k < n) {
			if (c->nbypass < TP_MAX_BYPASS &&
			    tp_parse_cidr(bp, n, &c->bypass[c->nbypass]) == 0)
				c->nbypass++;
			else
				warn_bad_cidr(bp, n);
		}
		bp = end ? end + 1 : NULL;
	}
}

const struct tp_config *tp_config(void)
{
	static struct tp_config scratch;   /* only if the reader never finishes */
	int st = __atomic_load_n(&cfg_state, __ATOMIC_ACQUIRE), zero = 0, i;

	if (st == 2)
		return &cfg;
	if (__atomic_compare_exchange_n(&cfg_state, &zero, 1, 0, __ATOMIC_ACQ_REL,
					__ATOMIC_ACQUIRE)) {
		parse(&cfg);
		__atomic_store_n(&cfg_state, 2, __ATOMIC_RELEASE);
		return &cfg;
	}
	for (i = 0; i < 100000; i++) {
		if (__atomic_load_n(&cfg_state, __ATOMIC_ACQUIRE) == 2)
			return &cfg;
		sched_yield();
	}
	/* The reader was interrupted by us (a signal handler on its own thread):
	 * an inert answer beats a deadlock. */
	memset(&scratch, 0, sizeof(scratch));
	return &scratch;
}
