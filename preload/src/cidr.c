/* CIDR prefixes: parsed from text (TAILPROXY_BYPASS) and matched against an
 * address. Pure functions, shared by the environment's bypass list and the
 * proxy's routing table (table.c). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <string.h>

#include "tailproxy.h"

int tp_parse_cidr(const char *s, size_t n, struct tp_cidr *out)
{
	char tmp[64];
	const char *slash;
	size_t alen;
	int bits = -1;

	while (n && (*s == ' ' || *s == '\t')) {
		s++;
		n--;
	}
	while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
		n--;
	if (n == 0 || n >= sizeof(tmp))
		return -1;
	slash = memchr(s, '/', n);
	alen = slash ? (size_t)(slash - s) : n;
	if (slash) {
		const char *p = slash + 1, *end = s + n;
		if (p == end || end - p > 3)
			return -1;
		bits = 0;
		for (; p < end; p++) {
			if (*p < '0' || *p > '9')
				return -1;
			bits = bits * 10 + (*p - '0');
		}
	}
	memcpy(tmp, s, alen);
	tmp[alen] = 0;
	memset(out, 0, sizeof(*out));
	if (inet_pton(AF_INET, tmp, out->addr) == 1) {
		out->family = 4;
		if (bits < 0)
			bits = 32;
		if (bits > 32)
			return -1;
	} else if (inet_pton(AF_INET6, tmp, out->addr) == 1) {
		out->family = 6;
		if (bits < 0)
			bits = 128;
		if (bits > 128)
			return -1;
	} else {
		return -1;
	}
	out->bits = (uint8_t)bits;
	return 0;
}

int tp_cidr_match(const struct tp_cidr *c, const struct tp_addr *a)
{
	int full = c->bits / 8, rest = c->bits % 8;

	if (c->family != a->family)
		return 0;
	if (memcmp(c->addr, a->addr, full) != 0)
		return 0;
	if (rest) {
		uint8_t mask = (uint8_t)(0xff << (8 - rest));
		if ((c->addr[full] & mask) != (a->addr[full] & mask))
			return 0;
	}
	return 1;
}
