/* The next definitions of the hooked calls, found lazily: another library's
 * constructor may call connect() before ours ran, and threads may race here
 * (they all store the same pointer). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>

#include "tailproxy.h"

#define REAL(type, name)                                                    \
	HIDDEN type real_##name##_fn(void)                                  \
	{                                                                   \
		static type p;                                              \
		type f = __atomic_load_n(&p, __ATOMIC_ACQUIRE);             \
		if (!f) {                                                   \
			f = (type)dlsym(RTLD_NEXT, #name);                  \
			__atomic_store_n(&p, f, __ATOMIC_RELEASE);          \
		}                                                           \
		return f;                                                   \
	}

REAL(connect_fn, connect)
REAL(getsockopt_fn, getsockopt)
REAL(getpeername_fn, getpeername)

int real_connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	connect_fn f = real_connect_fn();
	if (!f) {
		errno = ENOSYS;
		return -1;
	}
	return f(fd, sa, len);
}

int real_getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
	getsockopt_fn f = real_getsockopt_fn();
	if (!f) {
		errno = ENOSYS;
		return -1;
	}
	return f(fd, level, name, val, len);
}

int real_getpeername(int fd, struct sockaddr *sa, socklen_t *len)
{
	getpeername_fn f = real_getpeername_fn();
	if (!f) {
		errno = ENOSYS;
		return -1;
	}
	return f(fd, sa, len);
}

/* Resolve early too, so later first calls (maybe in a signal handler) need no dlsym. */
__attribute__((constructor)) static void real_init(void)
{
	int e = errno;
	real_connect_fn();
	real_getsockopt_fn();
	real_getpeername_fn();
	tp_config();
	if (tp_config()->active)
		tp_table_init();
	errno = e;
}
