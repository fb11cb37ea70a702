/* Internal interface of libtailproxy.so. Nothing here is exported. */
#ifndef TAILPROXY_H
#define TAILPROXY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <netinet/in.h>

#define HIDDEN __attribute__((visibility("hidden")))
#define EXPORT __attribute__((visibility("default")))

#include "real.h"
#include "wire.h"

/* ---- config.c ---- */
#define TP_MAX_BYPASS 64
#define TP_PATH_MAX 108

struct tp_cidr {
	uint8_t family;         /* 4 or 6 */
	uint8_t bits;
	uint8_t addr[16];
};

struct tp_config {
	int active;             /* TAILPROXY_SOCKET set */
	int verbose;
	char path[TP_PATH_MAX + 1];
	size_t path_len;        /* 0 or > sizeof(sun_path)-1 means unusable */
	int nbypass;
	struct tp_cidr bypass[TP_MAX_BYPASS];
	/* TAILPROXY_PARK: the proxy's parking listeners, so a non-blocking connect can be
	 * parked here and registered without waiting for the proxy (0 port = not given) */
	struct sockaddr_in park4;
	struct sockaddr_in6 park6;
};

HIDDEN const struct tp_config *tp_config(void);
HIDDEN int tp_goes_direct(const struct tp_config *cfg, const struct tp_addr *a);
HIDDEN int tp_bypassed(const struct tp_config *cfg, const struct tp_addr *a);  /* --bypass */

/* ---- cidr.c ---- */
HIDDEN int tp_parse_cidr(const char *s, size_t n, struct tp_cidr *out);
HIDDEN int tp_cidr_match(const struct tp_cidr *c, const struct tp_addr *a);

/* ---- table.c: the proxy's routing table, TAILPROXY_TABLE (docs/CHANNEL.md) ---- */
#define TP_TABLE_MAGIC 0x54525054u      /* "TPRT" read as a little-endian u32 */
#define TP_TABLE_VERSION 1
#define TP_TABLE_MAX 64                 /* routes per table */
enum {
	TP_TABLE_EXIT_NODE = 1,         /* an exit node is in use: everything goes to the proxy */
	TP_TABLE_TAILNET_ONLY = 2,      /* --tailnet-only: never connect directly */
	TP_TABLE_NO_TAILNET = 4,        /* --no-tailnet (informational) */
	TP_TABLE_HAND_OVER_ALL = 8,     /* hand everything over: the exit node is being changed, or too many routes */
	TP_TABLE_KNOWN_FLAGS = 15,
};
enum { TP_ROUTE_PROXY = 1, TP_ROUTE_BYPASS = 2 };

struct tp_route {           /* one prefix, 20 bytes as in the file */
	uint8_t family;         /* 4 or 6 */
	uint8_t bits;
	uint8_t kind;           /* TP_ROUTE_* */
	uint8_t zero;
	uint8_t addr[16];
};

struct tp_table {           /* one slot, laid out as in the file */
	uint64_t gen;
	uint64_t sum;           /* FNV-1a 64 of the rest (table.c) */
	uint32_t flags;         /* TP_TABLE_* */
	uint32_t count;
	struct tp_route routes[TP_TABLE_MAX];
};

HIDDEN void tp_table_init(void);                     /* map it now (constructor) */
HIDDEN int tp_table_read(struct tp_table *t);        /* 1: a consistent copy; 0: none */
HIDDEN int tp_table_direct(const struct tp_addr *a); /* 1: the proxy would only dial it directly */

/* ---- log.c: write(2)-based, async-signal-safe ---- */
struct tp_log {
	char buf[512];
	size_t n;
};
HIDDEN void log_init(struct tp_log *l);
HIDDEN void log_str(struct tp_log *l, const char *s);
HIDDEN void log_num(struct tp_log *l, long v);
HIDDEN void log_addr(struct tp_log *l, const struct tp_addr *a);
HIDDEN void log_errno(struct tp_log *l, int err);     /* "Connection refused" */
HIDDEN const char *tp_errname(int err);             /* "ECONNREFUSED" or NULL */
HIDDEN void log_flush(struct tp_log *l);            /* adds '\n', one write(2) */
HIDDEN void tp_warn_channel_down(const char *path, int err);

/* ---- fdtable.c: per-process state of our sockets, indexed by fd ---- */
enum { FD_PENDING = 1, FD_DONE = 2, FD_DIRECT = 3 };  /* DIRECT: connected past the proxy */

struct fd_info {
	uint64_t ino;           /* socket inode: identifies the socket behind fd */
	uint64_t token;         /* 0 = none (blocking connect interrupted) */
	int state;
	uint16_t lport;         /* local port when last checked (0 = unknown) */
	int mapped;             /* program asked with a v4-mapped IPv6 address */
	struct tp_addr dst;
};

HIDDEN uint64_t sock_ino(int fd);
HIDDEN void fdt_set(int fd, const struct fd_info *fi);
HIDDEN int fdt_get(int fd, struct fd_info *fi);      /* 1 if found for the current socket */
HIDDEN void fdt_update(int fd, uint64_t ino, int state, uint16_t lport);
HIDDEN void fdt_clear(int fd);

#include "channel.h"

/* udpexport.c: bind() of a UDP socket in export mode, for process pid (the preload's own, or
 * the supervised program's); 1 if handled (*ret is bind's result). */
HIDDEN int udp_export_bind(int fd, const struct sockaddr *sa, socklen_t len,
			   int (*real_bind)(int, const struct sockaddr *, socklen_t), int32_t pid,
			   int *ret);
/* udpdns.c: a connect() to port 53 goes to the name service's DNS responder; 1 if handled
 * (*ret is connect's result, errno set), 0 if not ours. */
HIDDEN int dns_redirect_connect(int fd, const struct sockaddr *sa, socklen_t len, int *ret);

/* ---- udpassoc.c: the channel's UDP association request (shared with the supervisor) ---- */
/* An AF_INET/AF_INET6 UDP socket: its domain, else 0. */
HIDDEN int udp_domain(int fd);
/* The largest datagram the tailnet carries whole to dst (1280-byte MTU). */
HIDDEN int udp_payload_max(const struct tp_addr *dst);
/* Ask the proxy for socket fd (of domain) and dst: 0 with *direct (send to dst yourself) or
 * the node's loopback endpoint in *ep; -1 with errno. Binds an unbound socket first. */
HIDDEN int udp_assoc_ask(int fd, int domain, const struct tp_addr *dst, int *direct,
			 struct tp_addr *ep);

/* ---- udp.c: UDP to routed destinations through the node's loopback endpoints ---- */
/* connect(): 1 if handled (*ret is connect's result, errno set), 0 if not ours. */
HIDDEN int udp_redirect_connect(int fd, const struct sockaddr *sa, socklen_t len, int *ret);
/* A send of n bytes to sa: 1 with *to (send there instead), 0 if not ours, -1 with errno. */
HIDDEN int udp_route_send(int fd, const struct sockaddr *sa, socklen_t len, size_t n,
			  struct sockaddr_storage *to, socklen_t *tolen);
/* After a receive: an endpoint's address (cap: the caller's size) becomes the destination's. */
HIDDEN void udp_fix_source(int fd, struct sockaddr *sa, socklen_t cap, socklen_t *len);
/* getpeername() of a socket connected to an endpoint: 1 with the destination in *out. */
HIDDEN int udp_peer(int fd, const struct sockaddr *peer, socklen_t len,
		    struct sockaddr_storage *out, socklen_t *outlen);
/* 1 if fd is connected to an endpoint and n bytes are more than the tailnet carries whole. */
HIDDEN int udp_oversize_connected(int fd, size_t n);

/* ---- helpers shared by the hooks (addr.c) ---- */
HIDDEN int sa_to_tp(const struct sockaddr *sa, socklen_t len, struct tp_addr *a, int *mapped);
HIDDEN socklen_t tp_to_sa(const struct tp_addr *a, int sock_family, int mapped,
			  struct sockaddr_storage *ss);
HIDDEN int tcp_state(int fd);                        /* tcpi_state or -1 */
HIDDEN uint16_t local_port(int fd, struct tp_addr *local);  /* 0 if unbound/error */
HIDDEN int64_t now_ns(void);
HIDDEN int so_error_of(int fd);         /* reads (clears) SO_ERROR; 0 on failure */
HIDDEN int sock_int(int fd, int level, int name);   /* an int option, or -1 */
/* A TCP socket of this family (with mapped, one that takes IPv4-mapped addresses): 1 and its
 * SO_DOMAIN in *domain; else 0 (the kernel gives the right error for a mismatch). */
HIDDEN int tcp_socket_of(int fd, int family, int mapped, int *domain);
/* SO_SNDTIMEO, which bounds a blocking connect, in ms; -1 = none. */
HIDDEN int send_timeout_ms(int fd);
/* An AF_INET/AF_INET6 socket of this type (SOCK_STREAM, SOCK_DGRAM): its family, else 0. */
HIDDEN int inet_socket_family(int fd, int type);
/* A non-loopback address made loopback in place (IPv4-mapped stays mapped); 1 if changed. */
HIDDEN int addr_to_loopback(struct sockaddr_storage *ss);

/* ---- outcome.c ---- */
/* Outcome of our pending connect, SO_ERROR already read: 1 with *err
 * (0 = connected) once known, 0 while in progress. */
HIDDEN int pending_outcome_v(int fd, uint64_t token, int so_error, int *err);

#endif
