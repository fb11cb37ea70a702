/* getsockopt(SOL_SOCKET, SO_ERROR): a proxied connect that failed shows the
 * kernel's ECONNREFUSED (the proxy fails the socket against a closed loopback
 * port); the real errno is kept by the proxy under the connect's token (outcome.c). */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "tailproxy.h"

EXPORT int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
	struct fd_info fi;
	int e0 = errno, v, r, out;

	r = real_getsockopt(fd, level, name, val, len);
	if (r != 0 || level != SOL_SOCKET || name != SO_ERROR || !val || !len ||
	    *len < sizeof(int) || !tp_config()->active)
		return r;
	memcpy(&v, val, sizeof(v));
	if (v != 0 && v != ECONNREFUSED && v != ECONNRESET)
		return r;
	if (!fdt_get(fd, &fi) || fi.state != FD_PENDING) {
		errno = e0;
		return r;
	}
	if (!pending_outcome_v(fd, fi.token, v, &out)) {   /* ECONNREFUSED: the real errno */
		out = 0;        /* no outcome yet: "in progress" */
		memcpy(val, &out, sizeof(out));
		errno = e0;
		return r;
	}
	fdt_update(fd, fi.ino, FD_DONE, out == 0 ? local_port(fd, NULL) : 0);
	memcpy(val, &out, sizeof(out));
	errno = e0;
	return r;
}
