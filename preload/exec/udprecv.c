/* Datagrams the supervisor sent elsewhere come back from elsewhere: answers to port-53
 * traffic (intercept.c) from the responder's loopback address, which resolvers that compare
 * the source with the nameserver they asked (glibc's res_send, musl's res_msend: both in
 * static programs) would drop; datagrams of a UDP association (udpsend.c) from the node's
 * loopback endpoint. On such a socket (udpsocks.c), recvfrom() with an address, recvmsg() and
 * recvmmsg() are made here, on the program's own socket taken with pidfd_getfd, and the
 * program is shown the address it asked (as the preload's udpdns.c and udp.c do). Any other
 * socket, or flags we do not model (MSG_ERRQUEUE, MSG_OOB), and the call runs as made.
 *
 * A blocking receive waits here in slices, watching the call: a signal to the program ends
 * the wait before anything is taken from the socket (the call is then restarted or fails with
 * EINTR, as the kernel's would). Between taking a datagram and the answer the program can
 * still be interrupted: that one datagram is then lost, as UDP may lose it anyway. Ancillary
 * data is not received (msg_controllen comes back 0); recvmmsg() takes one datagram per call
 * (a valid answer: the program calls again for the rest) and ignores its timeout argument
 * (the socket's own blocking and SO_RCVTIMEO decide). */
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

#define DATAGRAM_MAX 65536      /* one datagram */
#define IOV_MAX_WRITE 16
#define MODELLED (MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT | MSG_WAITALL | MSG_CMSG_CLOEXEC)

/* What the program is shown as the source of socket ino's datagrams. */
struct view {
	uint64_t ino;
	int served;             /* SERVED_DNS | SERVED_ROUTED (udpsocks.c) */
	struct tp_addr asked;   /* SERVED_DNS: the nameserver the program asked */
	int mapped;
};

/* The program's fd as ours if we serve its receives and it is a datagram socket; else -1
 * (the call continues). */
static int our_socket(const struct call *c, int fd, struct view *v)
{
	int s, type = -1;
	socklen_t len = sizeof(type);

	if (!served_any() || (s = target_fd(c, fd)) < 0)
		return -1;
	v->ino = sock_ino(s);
	v->served = served_socket(v->ino, &v->asked, &v->mapped);
	if (!v->served || real_getsockopt(s, SOL_SOCKET, SO_TYPE, &type, &len) != 0 ||
	    type != SOCK_DGRAM) {
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

/* One datagram from s into buf (cap bytes), its source into *from (*fromlen) and its
 * msg_flags into *msg_flags, as the program's call would take it: at once if the socket is
 * non-blocking or flags say MSG_DONTWAIT, else waiting (SO_RCVTIMEO: then EAGAIN). -1 with
 * errno; -2 when the call is gone (nothing was taken). */
static ssize_t receive(const struct call *c, int s, char *buf, size_t cap,
		       struct sockaddr_storage *from, socklen_t *fromlen, int *msg_flags, int flags)
{
	struct iovec one = {.iov_base = buf, .iov_len = cap};
	struct msghdr mh = {.msg_name = from, .msg_namelen = sizeof(*from), .msg_iov = &one,
			    .msg_iovlen = 1};
	int fl = fcntl(s, F_GETFL), nonblock = (flags & MSG_DONTWAIT) || (fl >= 0 && (fl & O_NONBLOCK));
	int ms = nonblock ? 0 : recv_timeout_ms(s);
	int64_t deadline = now_ns() + (int64_t)ms * 1000000;
	ssize_t r;

	for (;;) {
		struct pollfd p = {.fd = s, .events = POLLIN};
		int wait = 100;

		if (!call_valid(c))
			return -2;
		memset(from, 0, sizeof(*from));
		r = recvmsg(s, &mh, (flags & ~(MSG_WAITALL | MSG_CMSG_CLOEXEC)) | MSG_DONTWAIT);
		*fromlen = mh.msg_namelen;
		*msg_flags = mh.msg_flags;
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

/* The source the program is shown: the address it asked when the datagram is the
 * responder's or an endpoint's. */
static socklen_t shown_source(struct sockaddr_storage *from, socklen_t fromlen,
			      const struct view *v)
{
	struct sockaddr_storage ss;
	struct tp_addr dst;
	socklen_t n = 0;

	if (fromlen < sizeof(sa_family_t) || fromlen > sizeof(*from))
		return fromlen;
	if ((v->served & SERVED_DNS) && tp_dns_responder((struct sockaddr *)from, fromlen))
		n = tp_to_sa(&v->asked, from->ss_family, v->mapped, &ss);
	else if ((v->served & SERVED_ROUTED) &&
		 udp_route_source(v->ino, (struct sockaddr *)from, fromlen, &dst))
		n = tp_to_sa(&dst, from->ss_family, dst.family == 4 && from->ss_family == AF_INET6,
			     &ss);
	if (!n)
		return fromlen;
	memcpy(from, &ss, n);
	return n;
}

void on_recvfrom(const struct call *c)
{
	const __u64 *a = c->req->data.args;
	struct sockaddr_storage from;
	struct view v;
	size_t n = (size_t)a[2], cap = n < DATAGRAM_MAX ? n : DATAGRAM_MAX;
	socklen_t room, shown, fromlen;
	int flags = (int)a[3], s, msg_flags;
	char *buf;
	ssize_t r;

	if ((flags & ~MODELLED) || !a[4] || !a[5] || target_read(c, a[5], &room, sizeof(room)) != 0 ||
	    (int)room < 0 || (s = our_socket(c, (int)a[0], &v)) < 0) {
		answer_continue(c);     /* not ours, or the kernel's own EFAULT/EINVAL */
		return;
	}
	if (!(buf = malloc(cap ? cap : 1))) {
		close(s);
		answer(c, 0, ENOMEM);
		return;
	}
	r = receive(c, s, buf, cap, &from, &fromlen, &msg_flags, flags);
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
	shown = shown_source(&from, fromlen, &v);
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

/* One datagram from s into the program's msghdr prog (read from its memory at at): bytes,
 * or -1 with errno; -2 when the call is gone (nothing to answer). */
static ssize_t serve_msghdr(const struct call *c, int s, const struct view *v, uint64_t at,
			    struct msghdr *prog, int flags)
{
	struct sockaddr_storage from;
	struct iovec iov[IOV_MAX_WRITE];
	size_t cap = 0, done, i, part;
	socklen_t shown, fromlen;
	int msg_flags;
	char *buf;
	ssize_t r;

	if (target_read(c, (uintptr_t)prog->msg_iov, iov, prog->msg_iovlen * sizeof(iov[0])) != 0) {
		errno = EFAULT;
		return -1;
	}
	for (i = 0; i < prog->msg_iovlen; i++)
		cap += iov[i].iov_len < DATAGRAM_MAX - cap ? iov[i].iov_len : DATAGRAM_MAX - cap;
	if (!(buf = malloc(cap ? cap : 1))) {
		errno = ENOMEM;
		return -1;
	}
	r = receive(c, s, buf, cap, &from, &fromlen, &msg_flags, flags);
	if (r < 0) {
		free(buf);
		return r;
	}
	shown = shown_source(&from, fromlen, v);
	if (!call_valid(c)) {
		free(buf);
		return -2;
	}
	for (i = 0, done = 0; i < prog->msg_iovlen && done < (size_t)r && done < cap; i++, done += part) {
		part = iov[i].iov_len < cap - done ? iov[i].iov_len : cap - done;
		if (part > (size_t)r - done)
			part = (size_t)r - done;
		if (target_write(c, (uintptr_t)iov[i].iov_base, buf + done, part) != 0)
			break;
	}
	free(buf);
	prog->msg_controllen = 0;
	prog->msg_flags = msg_flags;
	if ((i < prog->msg_iovlen && done < (size_t)r && done < cap) ||
	    target_write(c, (uintptr_t)prog->msg_name, &from,
			 prog->msg_namelen < shown ? prog->msg_namelen : shown) != 0 ||
	    target_write(c, at + offsetof(struct msghdr, msg_namelen), &shown, sizeof(shown)) != 0 ||
	    target_write(c, at + offsetof(struct msghdr, msg_controllen), &prog->msg_controllen,
			 sizeof(prog->msg_controllen)) != 0 ||
	    target_write(c, at + offsetof(struct msghdr, msg_flags), &prog->msg_flags,
			 sizeof(prog->msg_flags)) != 0) {
		errno = EFAULT;
		return -1;
	}
	return r;
}

/* Beyond what we model (no address wanted, too many buffers), or not a socket of ours: the
 * call runs as made. */
static int modelled(const struct msghdr *prog, int flags)
{
	return !(flags & ~MODELLED) && prog->msg_name && (int)prog->msg_namelen >= 0 &&
	       prog->msg_iovlen <= IOV_MAX_WRITE;
}

void on_recvmsg(const struct call *c)
{
	const __u64 *a = c->req->data.args;
	struct msghdr prog;
	struct view v;
	int s;
	ssize_t r;

	if (!served_any() || target_read(c, a[1], &prog, sizeof(prog)) != 0 ||
	    !modelled(&prog, (int)a[2]) || (s = our_socket(c, (int)a[0], &v)) < 0) {
		answer_continue(c);
		return;
	}
	r = serve_msghdr(c, s, &v, a[1], &prog, (int)a[2]);
	close(s);
	if (r != -2)
		answer(c, r < 0 ? -1 : r, r < 0 ? errno : 0);
}

/* recvmmsg() (quic-go's ReadBatch): one datagram into the first message. */
void on_recvmmsg(const struct call *c)
{
	const __u64 *a = c->req->data.args;
	int flags = (int)a[3] & ~MSG_WAITFORONE, s;
	struct mmsghdr mm;
	struct view v;
	unsigned int len;
	ssize_t r;

	if (!served_any() || a[2] == 0 || target_read(c, a[1], &mm, sizeof(mm)) != 0 ||
	    !modelled(&mm.msg_hdr, flags) || (s = our_socket(c, (int)a[0], &v)) < 0) {
		answer_continue(c);
		return;
	}
	r = serve_msghdr(c, s, &v, a[1] + offsetof(struct mmsghdr, msg_hdr), &mm.msg_hdr, flags);
	close(s);
	if (r == -2)
		return;
	if (r < 0) {
		answer(c, 0, errno);
		return;
	}
	len = (unsigned int)r;
	if (target_write(c, a[1] + offsetof(struct mmsghdr, msg_len), &len, sizeof(len)) != 0)
		answer(c, 0, EFAULT);
	else
		answer(c, 1, 0);
}
