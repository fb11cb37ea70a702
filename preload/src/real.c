/* The one place the library finds libc: the next definitions of the calls we hook, found
 * lazily with dlsym(RTLD_NEXT). Another library's constructor may call connect() before
 * ours ran, and threads may race here (they all store the same pointer). The common layer
 * (channel.c and its helpers) calls libc's socket calls only through the real_* functions,
 * so a channel request never re-enters our own hooks. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>

#include "tailproxy.h"

void *tp_real(const char *sym, void **cache)
{
	void *f = __atomic_load_n(cache, __ATOMIC_ACQUIRE);

	if (!f) {
		f = dlsym(RTLD_NEXT, sym);
		__atomic_store_n(cache, f, __ATOMIC_RELEASE);
	}
	return f;
}

#define REAL(type, name)                                                    \
	static void *cache_##name;                                          \
	HIDDEN type real_##name##_fn(void)                                  \
	{                                                                   \
		return (type)tp_real(#name, &cache_##name);                 \
	}

REAL(connect_fn, connect)
REAL(getsockopt_fn, getsockopt)
REAL(getpeername_fn, getpeername)
REAL(bind_fn, bind)
REAL(listen_fn, listen)
REAL(close_fn, close)
REAL(sendmsg_fn, sendmsg)
REAL(recvmsg_fn, recvmsg)

/* Calls through a missing definition fail with ENOSYS. */
#define CALL(name, ...)                                                     \
	do {                                                                \
		__typeof__(real_##name##_fn()) f = real_##name##_fn();      \
		if (!f) {                                                   \
			errno = ENOSYS;                                     \
			return -1;                                          \
		}                                                           \
		return f(__VA_ARGS__);                                      \
	} while (0)

int real_connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	CALL(connect, fd, sa, len);
}

int real_getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
	CALL(getsockopt, fd, level, name, val, len);
}

int real_getpeername(int fd, struct sockaddr *sa, socklen_t *len)
{
	CALL(getpeername, fd, sa, len);
}

int real_bind(int fd, const struct sockaddr *sa, socklen_t len)
{
	CALL(bind, fd, sa, len);
}

int real_listen(int fd, int backlog)
{
	CALL(listen, fd, backlog);
}

int real_close(int fd)
{
	CALL(close, fd);
}

ssize_t real_sendmsg(int fd, const struct msghdr *msg, int flags)
{
	CALL(sendmsg, fd, msg, flags);
}

ssize_t real_recvmsg(int fd, struct msghdr *msg, int flags)
{
	CALL(recvmsg, fd, msg, flags);
}

/* Resolve early too, so later first calls (maybe in a signal handler) need no dlsym. */
__attribute__((constructor)) static void real_init(void)
{
	int e = errno;
	real_connect_fn();
	real_getsockopt_fn();
	real_getpeername_fn();
	real_bind_fn();
	real_listen_fn();
	real_close_fn();
	real_sendmsg_fn();
	real_recvmsg_fn();
	tp_config();
	if (tp_config()->active)
		tp_table_init();
	errno = e;
}
