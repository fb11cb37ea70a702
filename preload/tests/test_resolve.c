/* The resolver hooks (resolve.c, resquery.c). Each subcommand prints what the call returned in a
 * canonical text form, so a driver can compare runs with and without the preload:
 *   test_resolve gai NODE SERVICE FAMILY SOCKTYPE PROTOCOL FLAGS   ("-" = NULL; hints "-" = NULL)
 *   test_resolve ghbn NAME | ghbn2 NAME AF | ghbnr NAME BUFLEN | ghbn2r NAME AF BUFLEN
 *   test_resolve ghba ADDR | ghbar ADDR BUFLEN | gni ADDR PORT FLAGS HOSTLEN
 *   test_resolve resq|ress|resnq|resns NAME TYPE | resqd NAME DOMAIN TYPE | ressend NAME TYPE
 *   test_resolve threads N PREFIX        N threads, each getaddrinfo of PREFIX-i.test at once
 *   test_resolve freemix NAME            our results and glibc's freed by either freeaddrinfo
 *   test_resolve odd                     odd input: nothing crashes
 *   test_resolve connect NAME PORT       getaddrinfo + connect + one echo exchange
 */
#include "tptest.h"

#include <arpa/nameser.h>
#include <dlfcn.h>
#include <netdb.h>
#include <pthread.h>
#include <resolv.h>

static const char *arg(const char *s)
{
	return strcmp(s, "-") == 0 ? NULL : s;
}

static void print_sa(const struct sockaddr *sa)
{
	char ip[INET6_ADDRSTRLEN] = "?";
	int port = 0;
	unsigned scope = 0;

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *s = (const void *)sa;
		inet_ntop(AF_INET, &s->sin_addr, ip, sizeof(ip));
		port = ntohs(s->sin_port);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s = (const void *)sa;
		inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof(ip));
		port = ntohs(s->sin6_port);
		scope = s->sin6_scope_id;
	}
	printf("%s port=%d scope=%u", ip, port, scope);
}

static int gai(int argc, char **argv)
{
	struct addrinfo h, *res = NULL, *p;
	int r;

	CHECK(argc >= 8, "usage");
	memset(&h, 0, sizeof(h));
	h.ai_family = atoi(argv[4]);
	h.ai_socktype = atoi(argv[5]);
	h.ai_protocol = atoi(argv[6]);
	h.ai_flags = (int)strtol(argv[7], NULL, 0);
	errno = 0;
	r = getaddrinfo(arg(argv[2]), arg(argv[3]), strcmp(argv[4], "-") ? &h : NULL, &res);
	printf("ret=%d (%s)\n", r, r ? gai_strerror(r) : "ok");
	for (p = r ? NULL : res; p; p = p->ai_next) {
		printf("flags=%#x family=%d socktype=%d protocol=%d addrlen=%u ", p->ai_flags,
		       p->ai_family, p->ai_socktype, p->ai_protocol, p->ai_addrlen);
		print_sa(p->ai_addr);
		printf(" canon=%s\n", p->ai_canonname ? p->ai_canonname : "-");
	}
	if (r == 0)
		freeaddrinfo(res);
	return 0;
}

static void print_he(const struct hostent *he, int h)
{
	char ip[INET6_ADDRSTRLEN];
	int i;

	if (!he) {
		printf("NULL h_errno=%d\n", h);
		return;
	}
	printf("name=%s type=%d len=%d aliases=", he->h_name, he->h_addrtype, he->h_length);
	for (i = 0; he->h_aliases[i]; i++)
		printf("%s%s", i ? "," : "", he->h_aliases[i]);
	printf(" addrs=");
	for (i = 0; he->h_addr_list[i]; i++)
		printf("%s%s", i ? "," : "",
		       inet_ntop(he->h_addrtype, he->h_addr_list[i], ip, sizeof(ip)));
	printf("\n");
}

static int parse_addr(const char *s, unsigned char *buf, int *af)
{
	if (inet_pton(AF_INET, s, buf) == 1) {
		*af = AF_INET;
		return 4;
	}
	CHECK(inet_pton(AF_INET6, s, buf) == 1, "bad address %s", s);
	*af = AF_INET6;
	return 16;
}

static int herr(int argc, char **argv)
{
	const char *cmd = argv[1];
	struct hostent he, *res = NULL;
	char *buf;
	size_t buflen = 4096;
	int h = 0, r = 0, errno_after;

	errno = 0;
	if (!strcmp(cmd, "ghbn")) {
		res = gethostbyname(argv[2]);
		print_he(res, h_errno);
		return 0;
	}
	if (!strcmp(cmd, "ghbn2")) {
		res = gethostbyname2(argv[2], atoi(argv[3]));
		print_he(res, h_errno);
		return 0;
	}
	if (!strcmp(cmd, "ghba")) {
		unsigned char a[16];
		int af, len = parse_addr(argv[2], a, &af);
		res = gethostbyaddr(a, len, af);
		print_he(res, h_errno);
		return 0;
	}
	if (!strcmp(cmd, "ghbnr") || !strcmp(cmd, "ghbar"))
		buflen = (size_t)atol(argv[3]);
	else if (!strcmp(cmd, "ghbn2r"))
		buflen = (size_t)atol(argv[4]);
	buf = malloc(buflen ? buflen : 1);
	if (!strcmp(cmd, "ghbnr")) {
		r = gethostbyname_r(argv[2], &he, buf, buflen, &res, &h);
	} else if (!strcmp(cmd, "ghbn2r")) {
		r = gethostbyname2_r(argv[2], atoi(argv[3]), &he, buf, buflen, &res, &h);
	} else {
		unsigned char a[16];
		int af, len = parse_addr(argv[2], a, &af);
		r = gethostbyaddr_r(a, len, af, &he, buf, buflen, &res, &h);
	}
	errno_after = errno;
	printf("ret=%d errno=%d ", r, r ? errno_after : 0);
	print_he(res, h);
	free(buf);
	(void)argc;
	return 0;
}

static int gni(char **argv)
{
	struct sockaddr_storage ss;
	socklen_t len = mkaddr(argv[2], atoi(argv[3]), &ss);
	char host[1025], serv[64];
	int hostlen = atoi(argv[5]);
	int r = getnameinfo((struct sockaddr *)&ss, len, hostlen ? host : NULL, (socklen_t)hostlen,
			    serv, sizeof(serv), (int)strtol(argv[4], NULL, 0));

	printf("ret=%d host=%s serv=%s\n", r, r == 0 && hostlen ? host : "-", r == 0 ? serv : "-");
	return 0;
}

static void print_answer(int n, const unsigned char *ans)
{
	const unsigned char *p, *end = ans + n;
	char ip[INET6_ADDRSTRLEN], name[NS_MAXDNAME];
	int i, an, qd, k;

	printf("len>0=%d h_errno=%d", n > 0, h_errno);
	if (n <= 0) {
		printf("\n");
		return;
	}
	CHECK(n >= 12, "short answer");
	qd = ans[4] << 8 | ans[5];
	an = ans[6] << 8 | ans[7];
	printf(" rcode=%d an=%d", ans[3] & 15, an);
	p = ans + 12;
	for (i = 0; i < qd; i++) {
		k = dn_skipname(p, end);
		CHECK(k >= 0, "bad question");
		p += k + 4;
	}
	for (i = 0; i < an; i++) {
		int type, rdlen;
		k = dn_skipname(p, end);
		CHECK(k >= 0 && p + k + 10 <= end, "bad rr");
		p += k;
		type = p[0] << 8 | p[1];
		rdlen = p[8] << 8 | p[9];
		p += 10;
		if (type == ns_t_a)
			printf(" A=%s", inet_ntop(AF_INET, p, ip, sizeof(ip)));
		else if (type == ns_t_aaaa)
			printf(" AAAA=%s", inet_ntop(AF_INET6, p, ip, sizeof(ip)));
		else if (type == ns_t_ptr || type == ns_t_cname) {
			dn_expand(ans, end, p, name, sizeof(name));
			printf(" %s=%s", type == ns_t_ptr ? "PTR" : "CNAME", name);
		} else
			printf(" type%d", type);
		p += rdlen;
	}
	printf("\n");
}

static int res(char **argv)
{
	unsigned char ans[4096];
	const char *cmd = argv[1];
	int n;
	struct __res_state st;

	memset(&st, 0, sizeof(st));
	h_errno = 0;
	if (!strcmp(cmd, "resq"))
		n = res_query(argv[2], ns_c_in, atoi(argv[3]), ans, sizeof(ans));
	else if (!strcmp(cmd, "ress"))
		n = res_search(argv[2], ns_c_in, atoi(argv[3]), ans, sizeof(ans));
	else if (!strcmp(cmd, "resqd"))
		n = res_querydomain(argv[2], argv[3], ns_c_in, atoi(argv[4]), ans, sizeof(ans));
	else if (!strcmp(cmd, "resnq") || !strcmp(cmd, "resns")) {
		CHECK(res_ninit(&st) == 0, "res_ninit");
		n = (cmd[4] == 'q' ? res_nquery : res_nsearch)(&st, argv[2], ns_c_in, atoi(argv[3]),
								ans, sizeof(ans));
		h_errno = st.res_h_errno;
		res_nclose(&st);
	} else {
		unsigned char q[512];
		int qn = res_mkquery(ns_o_query, argv[2], ns_c_in, atoi(argv[3]), NULL, 0, NULL, q,
				     sizeof(q));
		CHECK(qn > 0, "res_mkquery");
		n = res_send(q, qn, ans, sizeof(ans));
	}
	print_answer(n, ans);
	return 0;
}

struct targ {
	int i;
	const char *prefix;
	int ok;
	char addr[INET6_ADDRSTRLEN];
};

static void *one(void *p)
{
	struct targ *t = p;
	char name[128];
	struct addrinfo h, *r;

	memset(&h, 0, sizeof(h));
	h.ai_socktype = SOCK_STREAM;
	snprintf(name, sizeof(name), "%s-%d.test", t->prefix, t->i);
	if (getaddrinfo(name, "80", &h, &r) == 0) {
		const struct sockaddr_in *s = (const void *)r->ai_addr;
		if (r->ai_family == AF_INET)
			inet_ntop(AF_INET, &s->sin_addr, t->addr, sizeof(t->addr));
		t->ok = 1;
		freeaddrinfo(r);
	}
	return NULL;
}

static int threads(char **argv)
{
	int n = atoi(argv[2]), i, ok = 0, distinct = 1, j;
	pthread_t *th = calloc((size_t)n, sizeof(*th));
	struct targ *t = calloc((size_t)n, sizeof(*t));

	for (i = 0; i < n; i++) {
		t[i].i = i;
		t[i].prefix = argv[3];
		CHECK(pthread_create(&th[i], NULL, one, &t[i]) == 0, "pthread_create");
	}
	for (i = 0; i < n; i++) {
		pthread_join(th[i], NULL);
		ok += t[i].ok;
	}
	for (i = 0; i < n; i++)
		for (j = i + 1; j < n; j++)
			if (t[i].ok && t[j].ok && !strcmp(t[i].addr, t[j].addr))
				distinct = 0;
	printf("threads=%d ok=%d distinct=%d\n", n, ok, distinct);
	free(th);
	free(t);
	return 0;
}

static int freemix(char **argv)
{
	typedef void (*fai_fn)(struct addrinfo *);
	fai_fn real = (fai_fn)dlsym(RTLD_NEXT, "freeaddrinfo");
	struct addrinfo *a, *b;
	int i;

	if (!real)
		real = freeaddrinfo;
	for (i = 0; i < 100; i++) {
		CHECK(getaddrinfo(argv[2], "80", NULL, &a) == 0, "ours");
		CHECK(getaddrinfo("127.0.0.1", "80", NULL, &b) == 0, "glibc's");
		freeaddrinfo(b);            /* glibc's results through our freeaddrinfo */
		if (i % 2)
			freeaddrinfo(a);
		else
			real(a);            /* ours through glibc's own: same layout */
	}
	freeaddrinfo(NULL);
	printf("ok: freemix\n");
	return 0;
}

static int odd(void)
{
	struct addrinfo *r = NULL, h;
	char big[2000];
	int i;

	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = 0;
	printf("%d\n", getaddrinfo(NULL, "80", NULL, &r));
	if (r)
		freeaddrinfo(r), r = NULL;
	printf("%d\n", getaddrinfo(NULL, NULL, NULL, &r));
	printf("%d\n", getaddrinfo("", NULL, NULL, &r));
	printf("%d\n", getaddrinfo(big, "80", NULL, &r));
	printf("%d\n", getaddrinfo("a..b", "80", NULL, &r));
	printf("%d\n", getaddrinfo(".", "80", NULL, &r));
	printf("%d\n", getaddrinfo("x y", "80", NULL, &r));
	memset(&h, 0, sizeof(h));
	h.ai_family = 12345;
	printf("%d\n", getaddrinfo("peer", "80", &h, &r));
	h.ai_family = 0;
	h.ai_flags = 0x40000;
	printf("%d\n", getaddrinfo("peer", "80", &h, &r));
	h.ai_flags = 0;
	h.ai_socktype = SOCK_RAW;
	printf("%d\n", getaddrinfo("peer", "http", &h, &r));
	h.ai_socktype = 12345;
	printf("%d\n", getaddrinfo("peer", "80", &h, &r));
	h.ai_socktype = 0;
	printf("%d\n", getaddrinfo("peer", "no-such-service", &h, &r));
	printf("%p\n", (void *)gethostbyname(big));
	printf("%p\n", (void *)gethostbyname(""));
	printf("%p\n", (void *)gethostbyname2("peer", 12345));
	printf("%p\n", (void *)gethostbyaddr("abcd", 3, AF_INET));
	printf("%d\n", getnameinfo(NULL, 0, NULL, 0, NULL, 0, 0));
	for (i = 0; i < 3; i++) {
		unsigned char ans[8];
		printf("%d\n", res_query("peer", ns_c_in, ns_t_a, ans, sizeof(ans)));
	}
	printf("ok: odd\n");
	return 0;
}

static int do_connect(char **argv)
{
	struct addrinfo h, *r;
	char buf[16];
	int fd, n;

	memset(&h, 0, sizeof(h));
	h.ai_socktype = SOCK_STREAM;
	CHECK(getaddrinfo(argv[2], argv[3], &h, &r) == 0, "getaddrinfo %s", argv[2]);
	fd = socket(r->ai_family, SOCK_STREAM, 0);
	CHECK(connect(fd, r->ai_addr, r->ai_addrlen) == 0, "connect: %s", strerror(errno));
	CHECK(write(fd, "ping", 4) == 4, "write");
	n = (int)read(fd, buf, sizeof(buf));
	printf("ok: connected, read %d\n", n);
	freeaddrinfo(r);
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	CHECK(argc >= 2, "usage");
	if (!strcmp(argv[1], "gai"))
		return gai(argc, argv);
	if (!strncmp(argv[1], "ghb", 3))
		return herr(argc, argv);
	if (!strcmp(argv[1], "gni"))
		return gni(argv);
	if (!strncmp(argv[1], "res", 3))
		return res(argv);
	if (!strcmp(argv[1], "threads"))
		return threads(argv);
	if (!strcmp(argv[1], "freemix"))
		return freemix(argv);
	if (!strcmp(argv[1], "odd"))
		return odd();
	if (!strcmp(argv[1], "connect"))
		return do_connect(argv);
	CHECK(0, "unknown subcommand %s", argv[1]);
	return 1;
}
