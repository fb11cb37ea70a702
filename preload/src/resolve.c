/* getaddrinfo/freeaddrinfo, gethostbyname{,2}{,_r}, gethostbyaddr{,_r}, getnameinfo: names are
 * answered by the proxy's name service (one RESOLVE/REVERSE round trip; names it already knows
 * from the name table it publishes, without one: nametable.c), so tailnet names work and, with
 * an exit node, no lookup leaves this host. Numeric and local inputs (address
 * literals, AI_NUMERICHOST, a NULL node, "localhost", NI_NUMERICHOST) and invalid hints go to
 * glibc itself, so those results are glibc's own. Inert without TAILPROXY_SOCKET and
 * TAILPROXY_RESOLVE=1. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <sched.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "nametable.h"

typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
typedef void (*fai_fn)(struct addrinfo *);
typedef int (*ghbn2r_fn)(const char *, int, struct hostent *, char *, size_t, struct hostent **,
			 int *);
typedef int (*ghbnr_fn)(const char *, struct hostent *, char *, size_t, struct hostent **, int *);
typedef struct hostent *(*ghbn_fn)(const char *);
typedef struct hostent *(*ghbn2_fn)(const char *, int);
typedef int (*ghbar_fn)(const void *, socklen_t, int, struct hostent *, char *, size_t,
			struct hostent **, int *);
typedef struct hostent *(*ghba_fn)(const void *, socklen_t, int);
typedef int (*gni_fn)(const struct sockaddr *, socklen_t, char *, socklen_t, char *, socklen_t,
		      int);

#define REAL_GAI TP_REAL(gai_fn, getaddrinfo)
#define REAL_FAI TP_REAL(fai_fn, freeaddrinfo)

/* Our addrinfo entries: one malloc block each, ai_canonname its own malloc (glibc's layout, so
 * glibc's freeaddrinfo frees them correctly too), with a tag between the struct and the
 * address: ai_addr == &block->sa never holds for glibc's entries (their address follows the
 * struct directly), and only then is the tag read. */
#define AI_TAG 0x7461696c70727879ULL   /* "tailprxy" */
struct tp_ai {
	struct addrinfo ai;
	uint64_t tag;
	union {
		struct sockaddr_in v4;
		struct sockaddr_in6 v6;
	} sa;
};

static int ours(const struct addrinfo *ai)
{
	const struct tp_ai *b = (const struct tp_ai *)ai;

	return ai->ai_addr == (const struct sockaddr *)&b->sa && b->tag == AI_TAG;
}

EXPORT void freeaddrinfo(struct addrinfo *ai)
{
	fai_fn real;

	if (ai && ours(ai)) {
		while (ai) {
			struct addrinfo *next = ai->ai_next;
			free(ai->ai_canonname);
			free(ai);
			ai = next;
		}
		return;
	}
	real = REAL_FAI;
	if (real)
		real(ai);
}

/* ---------------------------------------------------------------- AI_ADDRCONFIG */

/* Which families have a configured non-loopback address (glibc's rule for AI_ADDRCONFIG);
 * cached for one second. bit 0: IPv4, bit 1: IPv6. */
static int host_families(void)
{
	static int64_t at;
	static int cached;
	int64_t now = now_ns(), t = __atomic_load_n(&at, __ATOMIC_ACQUIRE);
	struct ifaddrs *ifa, *p;
	int bits = 0, e = errno;

	if (t && now - t < 1000000000LL)
		return __atomic_load_n(&cached, __ATOMIC_RELAXED);
	if (getifaddrs(&ifa) != 0) {
		errno = e;
		return 3;
	}
	for (p = ifa; p; p = p->ifa_next) {
		if (!p->ifa_addr)
			continue;
		if (p->ifa_addr->sa_family == AF_INET) {
			const struct sockaddr_in *s = (const void *)p->ifa_addr;
			if ((ntohl(s->sin_addr.s_addr) >> 24) != 127)
				bits |= 1;
		} else if (p->ifa_addr->sa_family == AF_INET6) {
			const struct sockaddr_in6 *s = (const void *)p->ifa_addr;
			if (!IN6_IS_ADDR_LOOPBACK(&s->sin6_addr))
				bits |= 2;
		}
	}
	freeifaddrs(ifa);
	__atomic_store_n(&cached, bits, __ATOMIC_RELAXED);
	__atomic_store_n(&at, now, __ATOMIC_RELEASE);
	errno = e;
	return bits;
}

/* ---------------------------------------------------------------- getaddrinfo */

#define KNOWN_AI_FLAGS (AI_PASSIVE | AI_CANONNAME | AI_NUMERICHOST | AI_V4MAPPED | AI_ALL | \
			AI_ADDRCONFIG | AI_IDN | AI_CANONIDN | AI_NUMERICSERV | 0x0100 | 0x0200)

static int eai_of(int err)
{
	switch (err) {
	case ENOENT:
	case ENAMETOOLONG:
		return EAI_NONAME;
	case ENODATA:
		return EAI_NODATA;
	case EAGAIN:
	case ENETDOWN:
	case ETIMEDOUT:
		return EAI_AGAIN;
	default:
		return EAI_FAIL;
	}
}

static struct addrinfo *new_entry(const struct addrinfo *tmpl, const struct tp_addr *a,
				  int v4mapped, int flags)
{
	struct tp_ai *b = calloc(1, sizeof(*b));
	uint16_t port = 0;

	if (!b)
		return NULL;
	if (tmpl->ai_addr && tmpl->ai_addr->sa_family == AF_INET)
		port = ((const struct sockaddr_in *)tmpl->ai_addr)->sin_port;
	b->tag = AI_TAG;
	b->ai.ai_flags = flags;
	b->ai.ai_socktype = tmpl->ai_socktype;
	b->ai.ai_protocol = tmpl->ai_protocol;
	b->ai.ai_addr = (struct sockaddr *)&b->sa;
	if (a->family == 4 && !v4mapped) {
		b->ai.ai_family = AF_INET;
		b->ai.ai_addrlen = sizeof(struct sockaddr_in);
		b->sa.v4.sin_family = AF_INET;
		b->sa.v4.sin_port = port;
		memcpy(&b->sa.v4.sin_addr, a->addr, 4);
	} else {
		b->ai.ai_family = AF_INET6;
		b->ai.ai_addrlen = sizeof(struct sockaddr_in6);
		b->sa.v6.sin6_family = AF_INET6;
		b->sa.v6.sin6_port = port;
		if (a->family == 4) {
			b->sa.v6.sin6_addr.s6_addr[10] = 0xff;
			b->sa.v6.sin6_addr.s6_addr[11] = 0xff;
			memcpy(&b->sa.v6.sin6_addr.s6_addr[12], a->addr, 4);
		} else {
			memcpy(&b->sa.v6.sin6_addr, a->addr, 16);
		}
	}
	return &b->ai;
}

EXPORT int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
		       struct addrinfo **res)
{
	const struct tp_dns_config *d = tp_dns();
	gai_fn real = REAL_GAI;
	struct addrinfo th, *tmpl = NULL, *t, *head = NULL, **tail = &head;
	struct tp_names got, more;
	struct tp_addr list[2 * TP_RES_MAX_ADDRS];
	int e0 = errno, flags, family, want, err, r, i, n = 0, fams;

	if (!real)
		return EAI_SYSTEM;
	flags = hints ? hints->ai_flags : (AI_V4MAPPED | AI_ADDRCONFIG);
	family = hints ? hints->ai_family : AF_UNSPEC;
	/* everything glibc answers without a lookup, or refuses before one, stays glibc's */
	if (!d->active || !node || !res || (flags & AI_NUMERICHOST) || (flags & ~KNOWN_AI_FLAGS) ||
	    (family != AF_UNSPEC && family != AF_INET && family != AF_INET6) ||
	    tp_numeric_host(node) || tp_local_name(node))
		return real(node, service, hints, res);
	if (!node[0])
		return EAI_NONAME;
	/* service, socket types and protocols (and their errors) by glibc, from a numeric host */
	memset(&th, 0, sizeof(th));
	th.ai_flags = (flags & (AI_NUMERICSERV | AI_PASSIVE)) | AI_NUMERICHOST;
	th.ai_family = AF_INET;
	th.ai_socktype = hints ? hints->ai_socktype : 0;
	th.ai_protocol = hints ? hints->ai_protocol : 0;
	r = real("0.0.0.0", service, &th, &tmpl);
	if (r != 0)
		return r;

	fams = (flags & AI_ADDRCONFIG) ? host_families() : 3;
	want = family == AF_INET ? 4 : family == AF_INET6 ? 6 : 0;
	if (want == 0 && fams == 2)
		want = 6;               /* AI_ADDRCONFIG on an IPv6-only host */
	err = tp_name_lookup(node, want, (flags & AI_IDN) != 0, &got);
	if (err == 0)
		for (i = 0; i < got.naddr; i++)
			list[n++] = got.addr[i];
	if (family == AF_INET6 && (flags & AI_V4MAPPED) && (n == 0 || (flags & AI_ALL)) &&
	    (err == 0 || err == ENODATA)) {
		int e2 = tp_name_lookup(node, 4, (flags & AI_IDN) != 0, &more);
		if (e2 == 0) {
			for (i = 0; i < more.naddr && n < 2 * TP_RES_MAX_ADDRS; i++)
				list[n++] = more.addr[i];
			if (err)
				got = more;
			err = 0;
		}
	}
	tp_name_lookup_log(node, err, &got);
	if (err == 0 && fams != 3) {
		int k = 0;
		for (i = 0; i < n; i++)
			if (list[i].family == 4 ? (fams & 1) : (fams & 2))
				list[k++] = list[i];
		n = k;
		if (n == 0)
			err = ENOENT;
	}
	if (err) {
		REAL_FAI(tmpl);
		errno = e0;
		return eai_of(err);
	}
	for (i = 0; i < n; i++) {
		int mapped = family == AF_INET6 && list[i].family == 4;
		for (t = tmpl; t; t = t->ai_next) {
			struct addrinfo *ai = new_entry(t, &list[i], mapped, flags);
			if (!ai)
				goto nomem;
			*tail = ai;
			tail = &ai->ai_next;
		}
	}
	REAL_FAI(tmpl);
	if (head && (flags & AI_CANONNAME)) {
		head->ai_canonname = strdup(got.name[0] ? got.name : node);
		if (!head->ai_canonname)
			goto nomem_freed;
	}
	*res = head;
	errno = e0;
	return head ? 0 : EAI_NONAME;
nomem:
	REAL_FAI(tmpl);
nomem_freed:
	freeaddrinfo(head);
	errno = e0;
	return EAI_MEMORY;
}

/* ---------------------------------------------------------------- hostent */

/* Lays out a hostent in buf: pointer arrays first (aligned), then addresses, then strings.
 * 0, or ERANGE when buf is too small. */
static int fill_hostent(struct hostent *he, char *buf, size_t buflen, const char *name,
			const struct tp_names *nm, int af, const struct tp_addr *addrs, int naddr,
			const void *raw_addr)
{
	size_t alen = af == AF_INET ? 4 : 16, need, off = 0, nlen = strlen(name) + 1;
	uintptr_t pad = (sizeof(char *) - ((uintptr_t)buf % sizeof(char *))) % sizeof(char *);
	int i, nal = nm->naliases, count = raw_addr ? 1 : naddr;
	const char *al = nm->aliases;
	char **aliases, **list;

	need = pad + (size_t)(nal + 1 + count + 1) * sizeof(char *) + (size_t)count * alen + nlen;
	for (i = 0; i < nal; i++) {
		size_t l = strlen(al) + 1;
		need += l;
		al += l;
	}
	if (need > buflen)
		return ERANGE;
	off = pad;
	aliases = (char **)(buf + off);
	off += (size_t)(nal + 1) * sizeof(char *);
	list = (char **)(buf + off);
	off += (size_t)(count + 1) * sizeof(char *);
	for (i = 0; i < count; i++) {
		list[i] = buf + off;
		if (raw_addr) {
			memcpy(buf + off, raw_addr, alen);
		} else if (af == AF_INET6 && addrs[i].family == 4) {    /* not reached: filtered */
			memset(buf + off, 0, 10);
			memset(buf + off + 10, 0xff, 2);
			memcpy(buf + off + 12, addrs[i].addr, 4);
		} else {
			memcpy(buf + off, addrs[i].addr, alen);
		}
		off += alen;
	}
	list[count] = NULL;
	he->h_name = buf + off;
	memcpy(buf + off, name, nlen);
	off += nlen;
	al = nm->aliases;
	for (i = 0; i < nal; i++) {
		size_t l = strlen(al) + 1;
		aliases[i] = buf + off;
		memcpy(buf + off, al, l);
		off += l;
		al += l;
	}
	aliases[nal] = NULL;
	he->h_aliases = aliases;
	he->h_addrtype = af;
	he->h_length = (int)alen;
	he->h_addr_list = list;
	return 0;
}

/* The common part of the gethostbyname family, glibc's conventions: 0 with *result set; 0 with
 * *result NULL and *h_errnop HOST_NOT_FOUND/NO_DATA; EAGAIN with TRY_AGAIN; ERANGE with
 * NETDB_INTERNAL when buf is too small. */
static int byname_r(const char *name, int af, struct hostent *ret, char *buf, size_t buflen,
		    struct hostent **result, int *h_errnop)
{
	struct tp_names nm;
	struct tp_addr addrs[TP_RES_MAX_ADDRS];
	int err, i, n = 0, r;

	*result = NULL;
	err = tp_name_lookup(name, af == AF_INET ? 4 : 6, 0, &nm);
	tp_name_lookup_log(name, err, &nm);
	if (err == 0)
		for (i = 0; i < nm.naddr; i++)
			if (nm.addr[i].family == (af == AF_INET ? 4 : 6))
				addrs[n++] = nm.addr[i];
	if (err == 0 && n == 0)
		err = ENODATA;
	if (err) {
		*h_errnop = tp_h_errno_of(err);
		if (*h_errnop == TRY_AGAIN) {
			errno = EAGAIN;
			return EAGAIN;
		}
		return 0;
	}
	r = fill_hostent(ret, buf, buflen, nm.name[0] ? nm.name : name, &nm, af, addrs, n, NULL);
	if (r) {
		*h_errnop = NETDB_INTERNAL;
		errno = ERANGE;
		return ERANGE;
	}
	*result = ret;
	*h_errnop = 0;
	return 0;
}

static int intercept_name(const char *name)
{
	return tp_dns()->active && name && !tp_numeric_host(name) && !tp_local_name(name);
}

EXPORT int gethostbyname2_r(const char *name, int af, struct hostent *ret, char *buf,
			    size_t buflen, struct hostent **result, int *h_errnop)
{
	int e0 = errno, r;

	if (!intercept_name(name) || (af != AF_INET && af != AF_INET6))
		return TP_REAL(ghbn2r_fn, gethostbyname2_r)(name, af, ret, buf, buflen, result,
							      h_errnop);
	r = byname_r(name, af, ret, buf, buflen, result, h_errnop);
	if (r == 0)
		errno = e0;
	return r;
}

EXPORT int gethostbyname_r(const char *name, struct hostent *ret, char *buf, size_t buflen,
			   struct hostent **result, int *h_errnop)
{
	int e0 = errno, r;

	if (!intercept_name(name))
		return TP_REAL(ghbnr_fn, gethostbyname_r)(name, ret, buf, buflen, result, h_errnop);
	r = byname_r(name, AF_INET, ret, buf, buflen, result, h_errnop);
	if (r == 0)
		errno = e0;
	return r;
}

/* Static storage for the non-reentrant calls, as glibc has: one result per process, valid
 * until the next call; filled under a lock. */
static struct {
	int lock;
	struct hostent he;
	char buf[TP_RES_MAX_ADDRS * (16 + sizeof(char *)) + 64 * sizeof(char *) +
		 TP_CANON_FIELD + TP_ALIASES_FIELD + 64];
} st;

static void st_lock(void)
{
	while (__atomic_exchange_n(&st.lock, 1, __ATOMIC_ACQUIRE))
		sched_yield();
}

static void st_unlock(void)
{
	__atomic_store_n(&st.lock, 0, __ATOMIC_RELEASE);
}

static struct hostent *byname_static(const char *name, int af)
{
	struct hostent *res;
	int h = 0, e0 = errno;

	st_lock();
	byname_r(name, af, &st.he, st.buf, sizeof(st.buf), &res, &h);
	st_unlock();
	h_errno = h;
	if (res)
		errno = e0;
	return res;
}

EXPORT struct hostent *gethostbyname2(const char *name, int af)
{
	if (!intercept_name(name) || (af != AF_INET && af != AF_INET6))
		return TP_REAL(ghbn2_fn, gethostbyname2)(name, af);
	return byname_static(name, af);
}

EXPORT struct hostent *gethostbyname(const char *name)
{
	if (!intercept_name(name))
		return TP_REAL(ghbn_fn, gethostbyname)(name);
	return byname_static(name, AF_INET);
}

/* ---------------------------------------------------------------- reverse */

static int byaddr_r(const void *addr, int af, struct hostent *ret, char *buf, size_t buflen,
		    struct hostent **result, int *h_errnop)
{
	struct tp_names nm;
	struct tp_addr a;
	char text[INET6_ADDRSTRLEN];
	int err;

	*result = NULL;
	memset(&a, 0, sizeof(a));
	a.family = af == AF_INET ? 4 : 6;
	memcpy(a.addr, addr, af == AF_INET ? 4 : 16);
	err = tp_reverse(&a, &nm);
	if (tp_config()->verbose && inet_ntop(af, addr, text, sizeof(text)))
		tp_names_log("reverse lookup", text, err);
	if (err) {
		*h_errnop = tp_h_errno_of(err);
		if (*h_errnop == TRY_AGAIN) {
			errno = EAGAIN;
			return EAGAIN;
		}
		return 0;
	}
	if (fill_hostent(ret, buf, buflen, nm.name, &nm, af, NULL, 1, addr)) {
		*h_errnop = NETDB_INTERNAL;
		errno = ERANGE;
		return ERANGE;
	}
	*result = ret;
	*h_errnop = 0;
	return 0;
}

static int intercept_addr(const void *addr, socklen_t len, int type)
{
	return tp_dns()->active && addr &&
	       ((type == AF_INET && len == 4) || (type == AF_INET6 && len == 16));
}

EXPORT int gethostbyaddr_r(const void *addr, socklen_t len, int type, struct hostent *ret,
			   char *buf, size_t buflen, struct hostent **result, int *h_errnop)
{
	int e0 = errno, r;

	if (!intercept_addr(addr, len, type))
		return TP_REAL(ghbar_fn, gethostbyaddr_r)(addr, len, type, ret, buf, buflen, result,
							  h_errnop);
	r = byaddr_r(addr, type, ret, buf, buflen, result, h_errnop);
	if (r == 0)
		errno = e0;
	return r;
}

EXPORT struct hostent *gethostbyaddr(const void *addr, socklen_t len, int type)
{
	struct hostent *res;
	int h = 0, e0 = errno;

	if (!intercept_addr(addr, len, type))
		return TP_REAL(ghba_fn, gethostbyaddr)(addr, len, type);
	st_lock();
	byaddr_r(addr, type, &st.he, st.buf, sizeof(st.buf), &res, &h);
	st_unlock();
	h_errno = h;
	if (res)
		errno = e0;
	return res;
}

/* The domain of this host's name (after the first dot), for NI_NOFQDN. */
static void own_domain(char *out, size_t n)
{
	char host[256];
	const char *dot;

	out[0] = 0;
	if (gethostname(host, sizeof(host)) != 0)
		return;
	host[sizeof(host) - 1] = 0;
	dot = strchr(host, '.');
	if (dot && strlen(dot + 1) < n)
		strcpy(out, dot + 1);
}

EXPORT int getnameinfo(const struct sockaddr *sa, socklen_t salen, char *host, socklen_t hostlen,
		       char *serv, socklen_t servlen, int flags)
{
	gni_fn real = TP_REAL(gni_fn, getnameinfo);
	struct tp_addr a;
	struct tp_names nm;
	int e0 = errno, err, r, mapped;
	size_t l;

	if (!real)
		return EAI_SYSTEM;
	if (!tp_dns()->active || !host || !hostlen || (flags & NI_NUMERICHOST) || !sa ||
	    salen < sizeof(sa_family_t) ||
	    !((sa->sa_family == AF_INET && salen >= sizeof(struct sockaddr_in)) ||
	      (sa->sa_family == AF_INET6 && salen >= sizeof(struct sockaddr_in6))))
		return real(sa, salen, host, hostlen, serv, servlen, flags);
	if (serv && servlen) {           /* the service part is glibc's (no lookup of a host) */
		r = real(sa, salen, NULL, 0, serv, servlen, flags);
		if (r)
			return r;
	}
	if (sa_to_tp(sa, salen, &a, &mapped) != 0)
		return real(sa, salen, host, hostlen, serv, servlen, flags);
	err = tp_reverse(&a, &nm);
	if (tp_config()->verbose) {
		char text[INET6_ADDRSTRLEN + 8];
		if (real(sa, salen, text, sizeof(text), NULL, 0, NI_NUMERICHOST) == 0)
			tp_names_log("reverse lookup", text, err);
	}
	if (err) {                      /* glibc: a temporary failure is reported as such */
		if (err == EAGAIN || err == ENETDOWN || err == ETIMEDOUT) {
			errno = e0;
			return EAI_AGAIN;
		}
		if (flags & NI_NAMEREQD) {
			errno = e0;
			return EAI_NONAME;
		}
		/* the numeric form, exactly as glibc writes it (scope ids included) */
		r = real(sa, salen, host, hostlen, NULL, 0, (flags & ~NI_NAMEREQD) | NI_NUMERICHOST);
		if (r == 0)
			errno = e0;
		return r;
	}
	if (flags & NI_NOFQDN) {
		char dom[256];
		char *dot = strchr(nm.name, '.');
		own_domain(dom, sizeof(dom));
		if (dot && dom[0] && strcasecmp(dot + 1, dom) == 0)
			*dot = 0;
	}
	l = strlen(nm.name);
	if (l + 1 > hostlen) {
		errno = e0;
		return EAI_OVERFLOW;
	}
	memcpy(host, nm.name, l + 1);
	errno = e0;
	return 0;
}
