/* real.c: the one place the library finds libc's definitions of the calls it hooks. */
#ifndef TAILPROXY_REAL_H
#define TAILPROXY_REAL_H

#include <sys/socket.h>
#include <sys/types.h>

#ifndef HIDDEN
#define HIDDEN __attribute__((visibility("hidden")))
#endif

typedef int (*connect_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*getsockopt_fn)(int, int, int, void *, socklen_t *);
typedef int (*getpeername_fn)(int, struct sockaddr *, socklen_t *);
typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*listen_fn)(int, int);
typedef int (*close_fn)(int);
typedef ssize_t (*sendmsg_fn)(int, const struct msghdr *, int);
typedef ssize_t (*recvmsg_fn)(int, struct msghdr *, int);

HIDDEN connect_fn real_connect_fn(void);
HIDDEN getsockopt_fn real_getsockopt_fn(void);
HIDDEN getpeername_fn real_getpeername_fn(void);
HIDDEN bind_fn real_bind_fn(void);
HIDDEN listen_fn real_listen_fn(void);
HIDDEN close_fn real_close_fn(void);
HIDDEN sendmsg_fn real_sendmsg_fn(void);
HIDDEN recvmsg_fn real_recvmsg_fn(void);

/* -1 with ENOSYS when libc has no such call */
HIDDEN int real_connect(int fd, const struct sockaddr *sa, socklen_t len);
HIDDEN int real_getsockopt(int fd, int level, int name, void *val, socklen_t *len);
HIDDEN int real_getpeername(int fd, struct sockaddr *sa, socklen_t *len);
HIDDEN int real_bind(int fd, const struct sockaddr *sa, socklen_t len);
HIDDEN int real_listen(int fd, int backlog);
HIDDEN int real_close(int fd);
HIDDEN ssize_t real_sendmsg(int fd, const struct msghdr *msg, int flags);
HIDDEN ssize_t real_recvmsg(int fd, struct msghdr *msg, int flags);

/* Any other next definition (the resolver hooks' libc calls), cached in *cache. */
HIDDEN void *tp_real(const char *sym, void **cache);
#define TP_REAL(type, sym) ({                                           \
	static void *cache_;                                            \
	(type)tp_real(#sym, &cache_);                                   \
})

#endif
