/* getpeername(): a relayed socket is really connected to the proxy's loopback
 * relay; the program must see the address it asked for. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "tailproxy.h"

static int is_loopback(const struct tp_addr *a)
{
	static const uint8_t one[16] = {[15] = 1};

	return a->family == 4 ? a->addr[0] == 127 : memcmp(a->addr, one, 16) == 0;
}

static void copy_out(struct sockaddr *sa, socklen_t *len, const void *src, socklen_t n)
{
	memcpy(sa, src, *len < n ? *len : n);
	*len = n;
}

EXPORT int getpeername(int fd, struct sockaddr *sa, socklen_t *len)
{
	struct sockaddr_storage ss, out;
	socklen_t sslen = sizeof(ss), outlen;
	struct tp_addr peer, local, dst;
	struct fd_info fi;
	int e0 = errno, mapped, err, have;
	uint16_t lport;

	if (!tp_config()->active || !sa || !len)
		return real_getpeername(fd, sa, len);
	if (real_getpeername(fd, (struct sockaddr *)&ss, &sslen) != 0)
		return -1;
	if (sslen > sizeof(ss) || sa_to_tp((struct sockaddr *)&ss, sslen, &peer, &mapped) != 0 ||
	    !is_loopback(&peer))
		goto real;
	if (udp_peer(fd, (struct sockaddr *)&ss, sslen, &out, &outlen)) {     /* udp.c */
		copy_out(sa, len, &out, outlen);
		errno = e0;
		return 0;
	}
	lport = local_port(fd, &local);
	if (lport == 0)
		goto real;
	have = fdt_get(fd, &fi);
	if (have && fi.state == FD_DIRECT)
		goto real;
	if (have && fi.lport == lport) {
		dst = fi.dst;
	} else {
		int type = 0;
		socklen_t tl = sizeof(type);

		if (real_getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 ||
		    type != SOCK_STREAM)
			goto real;
		/* unknown here (exec'd, dup'd) or the port moved since connect()
		 * returned (a non-blocking connect parks first): ask the proxy */
		if (chan_peer(&local, &err, &dst) != 0 || err != 0)
			goto real;
		if (have) {
			fdt_update(fd, fi.ino, FD_DONE, lport);
		} else {
			fi.ino = sock_ino(fd);
			fi.token = 0;
			fi.state = FD_DONE;
			fi.lport = lport;
			fi.mapped = 0;
			fi.dst = dst;
			fdt_set(fd, &fi);
		}
	}
	outlen = tp_to_sa(&dst, ss.ss_family, 0, &out);
	if (outlen == 0)
		goto real;
	copy_out(sa, len, &out, outlen);
	errno = e0;
	return 0;
real:
	copy_out(sa, len, &ss, sslen);
	errno = e0;
	return 0;
}
