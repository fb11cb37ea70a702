/* The name-service side of the channel: RESOLVE, REVERSE and QUERY requests (docs/CHANNEL.md),
 * TAILPROXY_RESOLVE / TAILPROXY_DNS_SERVER, and small helpers shared by the resolver hooks.
 * Like every request, one fresh SOCK_SEQPACKET connection each, closed before returning. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "names.h"

#define RESOLVE_BODY (4 + TP_NAME_MAX)
#define RESOLVE_REP (HDR + 8 + TP_RES_MAX_ADDRS * ADDR + TP_CANON_FIELD + TP_ALIASES_FIELD)
#define REVERSE_REP (HDR + 4 + TP_CANON_FIELD + TP_ALIASES_FIELD)
#define QUERY_REQ (HDR + 4 + TP_QUERY_MAX)

/* ---------------------------------------------------------------- config */

static struct tp_dns_config dcfg;
static int dcfg_state;           /* 0 unread, 1 being read, 2 ready */

/* "127.0.0.1:53053" or "[::1]:53053" */
static int parse_hostport(const char *s, size_t n, struct tp_addr *a)
{
	char tmp[64];
	const char *colon;
	long port = 0;
	size_t i;

	if (n == 0 || n >= sizeof(tmp))
		return -1;
	memcpy(tmp, s, n);
	tmp[n] = 0;
	colon = strrchr(tmp, ':');
	if (!colon || colon[1] == 0)
		return -1;
	for (i = 1; colon[i]; i++) {
		if (colon[i] < '0' || colon[i] > '9')
			return -1;
		port = port * 10 + (colon[i] - '0');
		if (port > 65535)
			return -1;
	}
	tmp[colon - tmp] = 0;
	memset(a, 0, sizeof(*a));
	a->port = (uint16_t)port;
	if (tmp[0] == '[') {
		size_t l = strlen(tmp);
		if (l < 3 || tmp[l - 1] != ']')
			return -1;
		tmp[l - 1] = 0;
		if (inet_pton(AF_INET6, tmp + 1, a->addr) != 1)
			return -1;
		a->family = 6;
		return 0;
	}
	if (inet_pton(AF_INET, tmp, a->addr) != 1)
		return -1;
	a->family = 4;
	return 0;
}

static void dns_parse(struct tp_dns_config *d)
{
	const char *on = getenv("TAILPROXY_RESOLVE");
	const char *srv = getenv("TAILPROXY_DNS_SERVER");

	memset(d, 0, sizeof(*d));
	if (!tp_config()->active || !on || strcmp(on, "1") != 0)
		return;
	d->active = 1;
	while (srv && *srv) {
		const char *end = strchr(srv, ',');
		size_t n = end ? (size_t)(end - srv) : strlen(srv);
		struct tp_addr a;

		if (parse_hostport(srv, n, &a) == 0) {
			int slot = a.family == 4 ? 0 : 1;
			if (d->server[slot].family == 0) {
				d->server[slot] = a;
				d->nserver++;
			}
		}
		srv = end ? end + 1 : NULL;
	}
}

const struct tp_dns_config *tp_dns(void)
{
	static struct tp_dns_config scratch;
	int st = __atomic_load_n(&dcfg_state, __ATOMIC_ACQUIRE), zero = 0, i;

	if (st == 2)
		return &dcfg;
	if (__atomic_compare_exchange_n(&dcfg_state, &zero, 1, 0, __ATOMIC_ACQ_REL,
					__ATOMIC_ACQUIRE)) {
		dns_parse(&dcfg);
		__atomic_store_n(&dcfg_state, 2, __ATOMIC_RELEASE);
		return &dcfg;
	}
	for (i = 0; i < 100000; i++) {
		if (__atomic_load_n(&dcfg_state, __ATOMIC_ACQUIRE) == 2)
			return &dcfg;
		sched_yield();
	}
	memset(&scratch, 0, sizeof(scratch));
	return &scratch;
}

int tp_dns_responder(const struct sockaddr *sa, socklen_t len)
{
	const struct tp_dns_config *d = tp_dns();
	struct tp_addr a;
	int mapped, i;

	if (!d->active || !d->nserver || sa_to_tp(sa, len, &a, &mapped) != 0)
		return 0;
	for (i = 0; i < 2; i++)
		if (d->server[i].family == a.family && d->server[i].port == a.port &&
		    memcmp(d->server[i].addr, a.addr, a.family == 4 ? 4 : 16) == 0)
			return 1;
	return 0;
}

__attribute__((constructor)) static void names_init(void)
{
	int e = errno;
	tp_dns();
	errno = e;
}

/* ---------------------------------------------------------------- helpers */

int tp_numeric_host(const char *name)
{
	struct in_addr a4;
	unsigned char a6[16];
	char tmp[INET6_ADDRSTRLEN + 1];
	const char *pct;
	size_t n;

	if (inet_aton(name, &a4))             /* glibc's getaddrinfo takes inet_aton forms too */
		return 1;
	pct = strchr(name, '%');
	n = pct ? (size_t)(pct - name) : strlen(name);
	if (n == 0 || n >= sizeof(tmp))
		return 0;
	memcpy(tmp, name, n);
	tmp[n] = 0;
	return inet_pton(AF_INET6, tmp, a6) == 1;
}

int tp_local_name(const char *name)
{
	return strcasecmp(name, "localhost") == 0 || strcasecmp(name, "localhost.") == 0;
}

int tp_h_errno_of(int err)
{
	switch (err) {
	case 0:
		return 0;
	case ENOENT:
		return HOST_NOT_FOUND;
	case ENODATA:
		return NO_DATA;
	case EAGAIN:
	case ENETDOWN:
	case ETIMEDOUT:
		return TRY_AGAIN;
	default:
		return NO_RECOVERY;
	}
}

void tp_names_log(const char *what, const char *name, int err)
{
	struct tp_log l;

	if (!tp_config()->verbose)
		return;
	log_init(&l);
	log_str(&l, "tailproxy: ");
	log_str(&l, what);
	log_str(&l, " ");
	log_str(&l, name);
	log_str(&l, ": ");
	if (err == 0)
		log_str(&l, "answered by the name service");
	else
		log_errno(&l, err);
	log_flush(&l);
}

/* ---------------------------------------------------------------- requests */

static int rep_err(const uint8_t *rep)
{
	int32_t e;

	memcpy(&e, rep + 4, 4);
	return e < 0 ? EIO : e;
}

static void get_addr(const uint8_t *b, struct tp_addr *a)
{
	memset(a, 0, sizeof(*a));
	a->family = b[0];
	memcpy(&a->port, b + 2, 2);
	memcpy(a->addr, b + 4, 16);
}

static void copy_names(struct tp_names *out, const uint8_t *name, size_t nlen,
		       const uint8_t *al, size_t alen, int nal)
{
	if (nlen > TP_CANON_FIELD - 1)
		nlen = TP_CANON_FIELD - 1;
	memcpy(out->name, name, nlen);
	out->name[nlen] = 0;
	if (alen > TP_ALIASES_FIELD)
		alen = TP_ALIASES_FIELD;
	memcpy(out->aliases, al, alen);
	/* count only complete strings */
	out->naliases = 0;
	{
		size_t off = 0;
		while (out->naliases < nal && off < alen) {
			const void *z = memchr(out->aliases + off, 0, alen - off);
			if (!z)
				break;
			off = (size_t)((const char *)z - out->aliases) + 1;
			out->naliases++;
		}
	}
}

int tp_resolve(const char *name, int family, int idn, struct tp_names *out)
{
	uint8_t req[HDR + RESOLVE_BODY], rep[RESOLVE_REP + 8];
	size_t n = strlen(name);
	int r, err, i;

	memset(out, 0, sizeof(*out));
	if (n == 0 || n > TP_NAME_MAX)
		return n ? ENAMETOOLONG : ENOENT;
	memset(req, 0, sizeof(req));
	req[HDR] = (uint8_t)family;
	req[HDR + 2] = (uint8_t)n;
	memcpy(req + HDR + 4, name, n);
	r = chan_request(OP_RESOLVE, idn ? FLAG_IDN : 0, req, sizeof(req), rep, sizeof(rep),
			 TP_NAMES_WAIT_MS);
	if (r < 0)
		return errno == ETIMEDOUT ? EAGAIN : ENETDOWN;
	if (r != RESOLVE_REP)
		return EIO;
	err = rep_err(rep);
	if (err)
		return err;
	{
		const uint8_t *b = rep + HDR;
		int naddr = b[0], clen = b[2], nal = b[3];
		uint16_t alen;

		memcpy(&alen, b + 4, 2);
		if (naddr > TP_RES_MAX_ADDRS)
			return EIO;
		out->flags = b[1];
		for (i = 0; i < naddr; i++) {
			get_addr(b + 8 + i * ADDR, &out->addr[out->naddr]);
			if (out->addr[out->naddr].family == 4 || out->addr[out->naddr].family == 6)
				out->naddr++;
		}
		b += 8 + TP_RES_MAX_ADDRS * ADDR;
		copy_names(out, b, (size_t)clen, b + TP_CANON_FIELD, alen, nal);
	}
	return out->naddr ? 0 : ENODATA;
}

int tp_reverse(const struct tp_addr *a, struct tp_names *out)
{
	uint8_t req[HDR + ADDR], rep[REVERSE_REP + 8];
	int r, err;

	memset(out, 0, sizeof(*out));
	memset(req, 0, sizeof(req));
	req[HDR] = a->family;
	memcpy(req + HDR + 4, a->addr, 16);
	r = chan_request(OP_REVERSE, 0, req, sizeof(req), rep, sizeof(rep), TP_NAMES_WAIT_MS);
	if (r < 0)
		return errno == ETIMEDOUT ? EAGAIN : ENETDOWN;
	if (r != REVERSE_REP)
		return EIO;
	err = rep_err(rep);
	if (err)
		return err;
	{
		const uint8_t *b = rep + HDR;
		uint16_t alen;

		memcpy(&alen, b + 2, 2);
		copy_names(out, b + 4, b[0], b + 4 + TP_CANON_FIELD, alen, b[1]);
	}
	return out->name[0] ? 0 : ENOENT;
}

int tp_query(const unsigned char *msg, int len, int search, unsigned char *ans, int *anslen)
{
	uint8_t req[QUERY_REQ], rep[HDR + 4 + TP_ANSWER_MAX];
	uint16_t n16;
	int r, err, n;

	if (len < 12 || len > TP_QUERY_MAX)
		return EMSGSIZE;
	memset(req, 0, sizeof(req));
	n16 = (uint16_t)len;
	memcpy(req + HDR, &n16, 2);
	memcpy(req + HDR + 4, msg, (size_t)len);
	r = chan_request(OP_QUERY, search ? FLAG_SEARCH : 0, req, sizeof(req), rep, sizeof(rep),
			 TP_NAMES_WAIT_MS);
	if (r < 0)
		return errno == ETIMEDOUT ? EAGAIN : ENETDOWN;
	if (r < HDR + 4)
		return EIO;
	err = rep_err(rep);
	if (err)
		return err;
	memcpy(&n16, rep + HDR, 2);
	n = n16;
	if (n > r - HDR - 4 || n < 12)
		return EIO;
	if (n > *anslen) {              /* cut, as res_send does: TC set */
		n = *anslen;
		if (n >= 3)
			rep[HDR + 4 + 2] |= 0x02;
	}
	memcpy(ans, rep + HDR + 4, (size_t)n);
	*anslen = n;
	return 0;
}
