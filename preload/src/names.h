/* Internal interface of the name-service hooks (names.c, resolve.c, resquery.c, udpdns.c).
 * Nothing here is exported. docs/CHANNEL.md: RESOLVE = 4, REVERSE = 5, QUERY = 6. */
#ifndef TAILPROXY_NAMES_H
#define TAILPROXY_NAMES_H

#include <netdb.h>

#include "tailproxy.h"

#define TP_NAME_MAX 255
#define TP_RES_MAX_ADDRS 16
#define TP_CANON_FIELD 256
#define TP_ALIASES_FIELD 512
#define TP_QUERY_MAX 512
#define TP_ANSWER_MAX 4096
#define TP_NAMES_WAIT_MS 60000   /* a lookup the system does may take its resolver's timeouts */

#define TP_RES_PLACEHOLDER 1
#define TP_RES_TAILNET 2
#define TP_RES_HOSTS 4

/* Answer of RESOLVE / REVERSE */
struct tp_names {
	int naddr;
	int flags;
	struct tp_addr addr[TP_RES_MAX_ADDRS];
	char name[TP_CANON_FIELD];          /* canonical (RESOLVE) or found (REVERSE) name */
	int naliases;
	char aliases[TP_ALIASES_FIELD];     /* naliases NUL-terminated strings, packed */
};

/* ---- names.c ---- */
struct tp_dns_config {
	int active;                 /* TAILPROXY_SOCKET and TAILPROXY_RESOLVE=1 */
	int nserver;                /* DNS responder addresses, TAILPROXY_DNS_SERVER */
	struct tp_addr server[2];   /* [0] IPv4, [1] IPv6 (family 0: none) */
};
HIDDEN const struct tp_dns_config *tp_dns(void);
/* Is sa (a datagram's source) one of the DNS responder's addresses? */
HIDDEN int tp_dns_responder(const struct sockaddr *sa, socklen_t len);

/* 0, or the name service's errno: ENOENT (no such name), ENODATA (no address of that
 * family), EAGAIN, EIO, ENAMETOOLONG; ENETDOWN when the proxy is unreachable (one stderr
 * line already printed). family: 0, 4 or 6. */
HIDDEN int tp_resolve(const char *name, int family, int idn, struct tp_names *out);
HIDDEN int tp_reverse(const struct tp_addr *a, struct tp_names *out);
/* A raw DNS query answered by the name service; *anslen in: buffer size, out: length. A
 * longer answer is cut with TC set. */
HIDDEN int tp_query(const unsigned char *msg, int len, int search, unsigned char *ans,
		    int *anslen);

HIDDEN int tp_numeric_host(const char *name);   /* an address literal glibc parses itself */
HIDDEN int tp_local_name(const char *name);     /* "localhost": glibc answers it from /etc/hosts */
HIDDEN int tp_h_errno_of(int err);              /* name-service errno -> h_errno */
HIDDEN void tp_names_log(const char *what, const char *name, int err);

#endif
