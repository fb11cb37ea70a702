/* res_query, res_search, res_querydomain, res_send and their res_n* forms (plus the __res_*
 * names older binaries link against): the query goes to the name service (QUERY), never to a
 * nameserver. A and AAAA are answered from the name service's own map (tailnet names,
 * placeholders, /etc/hosts); other types through the tailnet (with an exit node in use or
 * --dns=tailnet) or the system's nameservers otherwise. Return values and h_errno follow glibc:
 * the answer's length, or -1 with h_errno HOST_NOT_FOUND (NXDOMAIN), NO_DATA (no such record),
 * TRY_AGAIN (SERVFAIL, no answer), NO_RECOVERY (refused, malformed). */
#define _GNU_SOURCE
#include <arpa/nameser.h>
#include <errno.h>
#include <netdb.h>
#include <resolv.h>
#include <string.h>

#include "names.h"

typedef int (*nquery_fn)(res_state, const char *, int, int, unsigned char *, int);
typedef int (*query_fn)(const char *, int, int, unsigned char *, int);
typedef int (*nquerydomain_fn)(res_state, const char *, const char *, int, int,
			       unsigned char *, int);
typedef int (*querydomain_fn)(const char *, const char *, int, int, unsigned char *, int);
typedef int (*nsend_fn)(res_state, const unsigned char *, int, unsigned char *, int);
typedef int (*send_fn)(const unsigned char *, int, unsigned char *, int);

static void set_herr(res_state statp, int h)
{
	if (statp)
		statp->res_h_errno = h;
	h_errno = h;
}

static int ready(res_state statp)
{
	if (!(statp->options & RES_INIT) && res_ninit(statp) == -1) {
		set_herr(statp, NETDB_INTERNAL);
		return 0;
	}
	return 1;
}

/* h_errno for an answer that is not a usable one (0: usable) */
static int answer_herr(const unsigned char *ans, int n)
{
	int rcode, ancount;

	if (n < HFIXEDSZ)
		return NO_RECOVERY;
	rcode = ans[3] & 0x0f;
	ancount = ans[6] << 8 | ans[7];
	if (rcode == NOERROR && ancount > 0)
		return 0;
	switch (rcode) {
	case NXDOMAIN:
		return HOST_NOT_FOUND;
	case SERVFAIL:
		return TRY_AGAIN;
	case NOERROR:
		return NO_DATA;
	default:
		return NO_RECOVERY;
	}
}

static int query(res_state statp, const char *name, int class, int type, unsigned char *answer,
		 int anslen, int search)
{
	unsigned char q[TP_QUERY_MAX];
	int n, alen = anslen, err, h, e0 = errno;

	if (!ready(statp))
		return -1;
	if (!name || !answer || anslen < HFIXEDSZ) {
		set_herr(statp, NO_RECOVERY);
		errno = EINVAL;
		return -1;
	}
	n = res_nmkquery(statp, QUERY, name, class, type, NULL, 0, NULL, q, sizeof(q));
	if (n <= 0) {
		set_herr(statp, NO_RECOVERY);
		return -1;
	}
	err = tp_query(q, n, search, answer, &alen);
	tp_names_log("DNS query for", name, err);
	if (err) {
		set_herr(statp, tp_h_errno_of(err == ENETDOWN || err == EAGAIN ? EAGAIN : EIO));
		errno = err == ENETDOWN ? ECONNREFUSED : err == EAGAIN ? ETIMEDOUT : EIO;
		return -1;
	}
	h = answer_herr(answer, alen);
	set_herr(statp, h);
	errno = e0;
	return h ? -1 : alen;
}

static int active(void)
{
	return tp_dns()->active;
}

EXPORT int res_nquery(res_state statp, const char *name, int class, int type,
		      unsigned char *answer, int anslen)
{
	if (!active())
		return TP_REAL(nquery_fn, res_nquery)(statp, name, class, type, answer, anslen);
	return query(statp, name, class, type, answer, anslen, 0);
}

EXPORT int res_query(const char *name, int class, int type, unsigned char *answer, int anslen)
{
	if (!active())
		return TP_REAL(query_fn, res_query)(name, class, type, answer, anslen);
	return query(&_res, name, class, type, answer, anslen, 0);
}

/* res_search: the name service applies the search list when it resolves as the system would
 * (no exit node); through the tailnet, MagicDNS short names need none. */
EXPORT int res_nsearch(res_state statp, const char *name, int class, int type,
		       unsigned char *answer, int anslen)
{
	if (!active())
		return TP_REAL(nquery_fn, res_nsearch)(statp, name, class, type, answer, anslen);
	return query(statp, name, class, type, answer, anslen, 1);
}

EXPORT int res_search(const char *name, int class, int type, unsigned char *answer, int anslen)
{
	if (!active())
		return TP_REAL(query_fn, res_search)(name, class, type, answer, anslen);
	return query(&_res, name, class, type, answer, anslen, 1);
}

static int querydomain(res_state statp, const char *name, const char *domain, int class,
		       int type, unsigned char *answer, int anslen)
{
	char full[NS_MAXDNAME];
	size_t n, d;

	if (!ready(statp))
		return -1;
	if (!name) {
		set_herr(statp, NO_RECOVERY);
		return -1;
	}
	n = strlen(name);
	if (!domain) {
		if (n >= NS_MAXDNAME) {
			set_herr(statp, NO_RECOVERY);
			return -1;
		}
		memcpy(full, name, n + 1);
		if (n > 0 && full[n - 1] == '.')    /* as glibc: a trailing dot is dropped */
			full[n - 1] = 0;
	} else {
		d = strlen(domain);
		if (n + 1 + d >= NS_MAXDNAME) {
			set_herr(statp, NO_RECOVERY);
			return -1;
		}
		memcpy(full, name, n);
		full[n] = '.';
		memcpy(full + n + 1, domain, d + 1);
	}
	return query(statp, full, class, type, answer, anslen, 0);
}

EXPORT int res_nquerydomain(res_state statp, const char *name, const char *domain, int class,
			    int type, unsigned char *answer, int anslen)
{
	if (!active())
		return TP_REAL(nquerydomain_fn, res_nquerydomain)(statp, name, domain, class, type,
								  answer, anslen);
	return querydomain(statp, name, domain, class, type, answer, anslen);
}

EXPORT int res_querydomain(const char *name, const char *domain, int class, int type,
			   unsigned char *answer, int anslen)
{
	if (!active())
		return TP_REAL(querydomain_fn, res_querydomain)(name, domain, class, type, answer,
								anslen);
	return querydomain(&_res, name, domain, class, type, answer, anslen);
}

/* res_send: a query the program built itself. Returns the answer's length whatever its rcode
 * (as glibc), or -1 with errno. */
static int send_query(res_state statp, const unsigned char *msg, int msglen,
		      unsigned char *answer, int anslen)
{
	int alen = anslen, err, e0 = errno;

	if (!ready(statp))
		return -1;
	if (!msg || !answer || anslen < HFIXEDSZ) {
		errno = EINVAL;
		return -1;
	}
	err = tp_query(msg, msglen, 0, answer, &alen);
	if (err) {
		errno = err == EMSGSIZE ? EMSGSIZE : err == ENETDOWN ? ECONNREFUSED :
			err == EAGAIN ? ETIMEDOUT : EIO;
		return -1;
	}
	errno = e0;
	return alen;
}

EXPORT int res_nsend(res_state statp, const unsigned char *msg, int msglen,
		     unsigned char *answer, int anslen)
{
	if (!active())
		return TP_REAL(nsend_fn, res_nsend)(statp, msg, msglen, answer, anslen);
	return send_query(statp, msg, msglen, answer, anslen);
}

EXPORT int res_send(const unsigned char *msg, int msglen, unsigned char *answer, int anslen)
{
	if (!active())
		return TP_REAL(send_fn, res_send)(msg, msglen, answer, anslen);
	return send_query(&_res, msg, msglen, answer, anslen);
}

/* The names programs linked before glibc 2.34 (or against libresolv) use. */
#define ALIAS(name) \
	extern __typeof(name) __##name __attribute__((alias(#name), copy(name), visibility("default")))
ALIAS(res_query);
ALIAS(res_nquery);
ALIAS(res_search);
ALIAS(res_nsearch);
ALIAS(res_querydomain);
ALIAS(res_nquerydomain);
ALIAS(res_send);
ALIAS(res_nsend);
