/* tailproxy-exec: runs a program with its socket calls trapped by a seccomp filter
 * (SECCOMP_FILTER_FLAG_NEW_LISTENER) and answered here, for programs LD_PRELOAD cannot reach:
 * static binaries, Go programs of either linkage, raw syscalls. The connect() hand-over is the
 * preload's (park, register, join through the channel: ../src/channel.c), made on the
 * program's own socket taken with pidfd_getfd. */
#ifndef TAILPROXY_SECCOMP_EXEC_H
#define TAILPROXY_SECCOMP_EXEC_H

#include <linux/seccomp.h>
#include <stdint.h>
#include <sys/types.h>

#include "../src/tailproxy.h"

/* filter.c: install the filter in the calling process (exports: bind() and listen() trapped
 * too); the listener fd, or -1 with errno (EINVAL/ENOSYS/EPERM/EACCES: seccomp user
 * notification is unavailable here). */
int install_filter(int exports);
/* export mode (TAILPROXY_EXPORT_LISTENERS=1 with a channel) */
int export_mode(void);

/* target.c: the trapped task and its call */
struct call {
	int listener;
	struct seccomp_notif *req;      /* as received (sizes from SECCOMP_GET_NOTIF_SIZES) */
};
/* read len bytes of the target's memory at addr; 0 or -1 */
int target_read(const struct call *c, uint64_t addr, void *buf, size_t len);
/* write len bytes into the target's memory at addr; 0 or -1 */
int target_write(const struct call *c, uint64_t addr, const void *buf, size_t len);
/* the target's fd as a descriptor of ours (pidfd_getfd), or -1 */
int target_fd(const struct call *c, int fd);
/* is the call still waiting (the task alive, its memory the one we read)? */
int call_valid(const struct call *c);
/* answers: the call returns val (err 0) or -1 with errno err; or the kernel runs it as made */
void answer(const struct call *c, int64_t val, int err);
void answer_continue(const struct call *c);
/* main.c: bytes of a struct seccomp_notif as this kernel fills it (SECCOMP_GET_NOTIF_SIZES) */
size_t notif_size(void);

/* exports.c: bind() and listen() in export mode */
void on_bind(const struct call *c);
void on_listen(const struct call *c);

/* pending.c: handed-over non-blocking connects not yet settled, by socket inode */
void pending_add(uint64_t ino, uint64_t token);
int pending_token(uint64_t ino, uint64_t *token);    /* 1 if pending */
void pending_drop(uint64_t ino);
int pending_any(void);                               /* 0: none at all (a cheap check) */
/* udpsocks.c: datagram sockets whose receives we serve, by socket inode: port-53 traffic sent
 * to the responder (with the address the program named: what its answers must show as their
 * source), or UDP associations through the node (udproute.c) */
enum { SERVED_DNS = 1, SERVED_ROUTED = 2 };
void dns_socket_add(uint64_t ino, const struct tp_addr *asked, int mapped);
void routed_socket_add(uint64_t ino);
int served_socket(uint64_t ino, struct tp_addr *asked, int *mapped);   /* SERVED_*, 0: not */
int served_any(void);                                /* 0: none yet (a cheap check) */
/* udproute.c: UDP to routed destinations through the node's loopback endpoints */
int udp_routed(const struct tp_addr *dst);          /* would the proxy route it? (no syscall) */
/* the endpoint program socket s sends to for dst (given as an address of family) instead: 1
 * with *to; 0 when not ours (not a UDP socket of that family) or the proxy says direct; -1
 * with errno. Binds an unbound socket first. */
int udp_route_for(int pid, int s, int family, const struct tp_addr *dst,
		  struct sockaddr_storage *to, socklen_t *tolen);
/* sa (as socket ino received from it or is connected to) an endpoint of ino's: 1 with *dst */
int udp_route_source(uint64_t ino, const struct sockaddr *sa, socklen_t len, struct tp_addr *dst);
int udp_route_any(void);                             /* 0: no association yet */
/* udpsend.c: sendto()/sendmsg()/sendmmsg() with a routed destination (the caller read it from
 * the call's first address: dst, its family as given), and connect() of a UDP socket s (ours,
 * taken from the program) to one; each answers the call */
void udp_sendto(const struct call *c, const struct tp_addr *dst, int family);
void udp_sendmsg(const struct call *c, const struct tp_addr *dst, int family);
void udp_sendmmsg(const struct call *c, const struct tp_addr *dst, int family);
void udp_connect(const struct call *c, int s, const struct tp_addr *dst, int family,
		 const struct sockaddr *sa, socklen_t len);
/* udprecv.c: recvfrom() with an address, recvmsg(), recvmmsg() */
void on_recvfrom(const struct call *c);
void on_recvmsg(const struct call *c);
void on_recvmmsg(const struct call *c);

/* intercept.c: has this supervisor handed any socket over yet? */
int handed_over_any(void);

/* intercept.c: one trapped call, answered (or handed to a thread that answers it); req stays
 * the caller's */
void handle_call(int listener, struct seccomp_notif *req);

#endif
