/* Answers to port-53 traffic the supervisor sent to the responder (intercept.c) come from the
 * responder's loopback address; resolvers that compare the source with the nameserver they
 * asked (glibc's res_send, musl's res_msend: both in static programs) would drop them. On such
 * a socket (dnssocks.c), recvfrom() with an address and recvmsg() are made here, on the
 * program's own socket taken with pidfd_getfd, and the program is shown the address it asked,
 * as the preload's udpdns.c does. Any other socket, or flags we do not model (MSG_ERRQUEUE,
 * MSG_OOB), and the call runs as made.
 *
 * A blocking receive waits here in slices, watching the call: a signal to the program ends
 * the wait before anything is taken from the socket (the call is then restarted or fails with
 * EINTR, as the kernel's would). Between taking a datagram and the answer the program can
 * still be interrupted: that one datagram is then lost, as UDP may lose it anyway, and the
 * resolver asks again. Ancillary data is not received (msg_controllen comes back 0). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>

#include "../src/names.h"
#include "seccomp_exec.h"

#define DNS_MAX 65536           /* one datagram */
#define IOV_MAX_WRITE 16
#define MODELLED (MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT | MSG_WAITALL | MSG_CMSG_CLOEXEC)

/* Is sa (as received) one of the responder's addresses? */
static int from_responder(const struct sockaddr *sa, socklen_t len)
{
	const struct tp_dns_config *d = tp_dns();
	struct tp_addr a;
	int mapped, i;

	if (sa_to_tp(sa, len, &a, &mapped) != 0)
		return 0;
	for (i = 0; i < 2; i++)
		if (d->server[i].family == a.family && d->server[i].port == a.port &&
		    memcmp(d->server[i].addr, a.addr, a.family == 4 ? 4 : 16) == 0)
			return 1;
	return 0;
}

/* The program's fd as ours if its DNS went to the responder and it is a datagram socket; else
 * -1 (the call continues). */
static int our_socket(const struct call *c, int fd, struct tp_addr *asked, int *mapped)
{
	int s, type = -1;
	socklen_t len = sizeof(type);

	if (!dns_socket_any() || (s = target_fd(c, fd)) < 0)
		return -1;
	if (!dns_socket_asked(sock_ino(s), asked, mapped) ||
	    real_getsockopt(s, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_DGRAM) {
		close(s);
		return -1;
	}
	return s;
}

/* SO_RCVTIMEO bounds a blocking receive; -1 = none. */
static int recv_timeout_ms(int s)
{
	struct timeval tv;
	socklen_t len = sizeof(tv);

	if (real_getsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, &len) != 0 ||
	    (tv.tv_sec == 0 && tv.tv_usec == 0))
		return -1;
	if (tv.tv_sec > 2000000)
		return 2000000000;
	return (int)(tv.tv_sec * 1000 + (tv.tv_usec + 999) / 1000);
}

/* One datagram from s into mh (one buffer), as the program's call would take it: at once if
 * the socket is non-blocking or flags say MSG_DONTWAIT, else waiting (SO_RCVTIMEO: then
 * EAGAIN). -1 with errno; -2 when the call is gone (nothing was taken). */
static ssize_t receive(const struct call *c, int s, struct msghdr *mh, int flags)
{
	int fl = fcntl(s, F_GETFL), nonblock = (flags & MSG_DONTWAIT) || (fl >= 0 && (fl & O_NONBLOCK));
	int ms = nonblock ? 0 : recv_timeout_ms(s);
	int64_t deadline = now_ns() + (int64_t)ms * 1000000;
	ssize_t r;

	for (;;) {
		struct pollfd p = {.fd = s, .events = POLLIN};
		int wait = 100;

		if (!call_valid(c))
			return -2;
		r = recvmsg(s, mh, (flags & ~(MSG_WAITALL | MSG_CMSG_CLOEXEC)) | MSG_DONTWAIT);
		if (r >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK) || nonblock)
			return r;
		if (ms > 0) {
			int64_t left = (deadline - now_ns()) / 1000000;
			if (left <= 0) {
				errno = EAGAIN;
				return -1;
			}
			if (left < wait)
				wait = (int)left;
		}
		if (poll(&p, 1, wait) < 0 && errno != EINTR)
			return -1;
	}
}

/* The source the program is shown: the address it asked when the answer is the responder's. */
static socklen_t shown_source(struct sockaddr_storage *from, socklen_t fromlen,
			      const struct tp_addr *asked, int mapped)
{
	struct sockaddr_storage ss;
	socklen_t n;

	if (fromlen < sizeof(sa_family_t) || fromlen > sizeof(*from) ||
	    !from_responder((struct sockaddr *)from, fromlen))
		return fromlen;
	n = tp_to_sa(asked, from->ss_family, mapped, &ss);
	if (!n)
		return fromlen;
	memcpy(from, &ss, n);
	return n;
}

void on_recvfrom(const struct call *c)
{
	const __u64 *a = c->req->data.args;
	struct sockaddr_storage from;
	struct tp_addr asked;
	struct msghdr mh;
	struct iovec iov;
	size_t n = (size_t)a[2], cap = n < DNS_MAX ? n : DNS_MAX;
	socklen_t room, shown;
	int flags = (int)a[3], s, mapped;
	char *buf;
	ssize_t r;

	if ((flags & ~MODELLED) || !a[4] || !a[5] || target_read(c, a[5], &room, sizeof(room)) != 0 ||
	    (int)room < 0 || (s = our_socket(c, (int)a[0], &asked, &mapped)) < 0) {
		answer_continue(c);     /* not ours, or the kernel's own EFAULT/EINVAL */
		return;
	}
	if (!(buf = malloc(cap ? cap : 1))) {
		close(s);
		answer(c, 0, ENOMEM);
		return;
	}
	memset(&mh, 0, sizeof(mh));
	memset(&from, 0, sizeof(from));
	iov.iov_base = buf;
	iov.iov_len = cap;
	mh.msg_name = &from;
	mh.msg_namelen = sizeof(from);
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	r = receive(c, s, &mh, flags);
	close(s);
	if (r == -2) {
		free(buf);
		return;
	}
	if (r < 0) {
		answer(c, 0, errno);
		free(buf);
		return;
	}
	shown = shown_source(&from, mh.msg_namelen, &asked, mapped);
	if (!call_valid(c)) {
		free(buf);
		return;
	}
	if (target_write(c, a[1], buf, (size_t)r < cap ? (size_t)r : cap) != 0 ||
	    target_write(c, a[4], &from, room < shown ? room : shown) != 0 ||
	    target_write(c, a[5], &shown, sizeof(shown)) != 0)
		answer(c, 0, EFAULT);
	else
		answer(c, r, 0);
	free(buf);
}

void on_recvmsg(const struct call *c)
{
	const __u64 *a = c->req->data.args;
	struct sockaddr_storage from;
	struct iovec iov[IOV_MAX_WRITE], one;
	struct tp_addr asked;
	struct msghdr prog, mh;
	size_t cap = 0, done, i, part;
	socklen_t shown;
	int flags = (int)a[2], s, mapped;
	char *buf;
	ssize_t r;

	if (!dns_socket_any() || (flags & ~MODELLED) ||
	    target_read(c, a[1], &prog, sizeof(prog)) != 0 || !prog.msg_name ||
	    (int)prog.msg_namelen < 0 || prog.msg_iovlen > IOV_MAX_WRITE ||
	    target_read(c, (uintptr_t)prog.msg_iov, iov, prog.msg_iovlen * sizeof(iov[0])) != 0 ||
	    (s = our_socket(c, (int)a[0], &asked, &mapped)) < 0) {
		answer_continue(c);     /* not ours, or beyond what we model: the kernel's answer */
		return;
	}
	for (i = 0; i < prog.msg_iovlen; i++)
		cap += iov[i].iov_len < DNS_MAX - cap ? iov[i].iov_len : DNS_MAX - cap;
	if (!(buf = malloc(cap ? cap : 1))) {
		close(s);
		answer(c, 0, ENOMEM);
		return;
	}
	memset(&mh, 0, sizeof(mh));
	memset(&from, 0, sizeof(from));
	one.iov_base = buf;
	one.iov_len = cap;
	mh.msg_name = &from;
	mh.msg_namelen = sizeof(from);
	mh.msg_iov = &one;
	mh.msg_iovlen = 1;
	r = receive(c, s, &mh, flags);
	close(s);
	if (r == -2) {
		free(buf);
		return;
	}
	if (r < 0) {
		answer(c, 0, errno);
		free(buf);
		return;
	}
	shown = shown_source(&from, mh.msg_namelen, &asked, mapped);
	if (!call_valid(c)) {
		free(buf);
		return;
	}
	for (i = 0, done = 0; i < prog.msg_iovlen && done < (size_t)r && done < cap; i++, done += part) {
		part = iov[i].iov_len < cap - done ? iov[i].iov_len : cap - done;
		if (part > (size_t)r - done)
			part = (size_t)r - done;
		if (target_write(c, (uintptr_t)iov[i].iov_base, buf + done, part) != 0)
			break;
	}
	prog.msg_controllen = 0;
	prog.msg_flags = mh.msg_flags;
	if ((i < prog.msg_iovlen && done < (size_t)r && done < cap) ||
	    target_write(c, (uintptr_t)prog.msg_name, &from,
			 prog.msg_namelen < shown ? prog.msg_namelen : shown) != 0 ||
	    target_write(c, a[1] + offsetof(struct msghdr, msg_namelen), &shown, sizeof(shown)) != 0 ||
	    target_write(c, a[1] + offsetof(struct msghdr, msg_controllen), &prog.msg_controllen,
			 sizeof(prog.msg_controllen)) != 0 ||
	    target_write(c, a[1] + offsetof(struct msghdr, msg_flags), &prog.msg_flags,
			 sizeof(prog.msg_flags)) != 0)
		answer(c, 0, EFAULT);
	else
		answer(c, r, 0);
	free(buf);
}
