/* UDP from a supervised program to a destination the proxy routes (udproute.c has the
 * associations): made here on the program's own socket taken with pidfd_getfd, as the
 * preload's udpdns.c and connect.c do through udp.c.
 *
 * - connect(): the socket is connected to the node's loopback endpoint (bound first if it
 *   was not), so send()/write()/recv()/read() then run at the kernel's speed untrapped.
 * - sendto()/sendmsg()/sendmmsg() with an address: the payload (read from the program's
 *   memory, bounded) goes to the endpoint; the answer is the byte count. Above what the
 *   tailnet carries in one packet, EMSGSIZE (with UDP_SEGMENT, per segment). Ancillary data
 *   (IP_TOS, UDP_SEGMENT...) goes along as given, bounded.
 * Whatever we acted on is answered by us, never continued; what the proxy sends direct, and
 * sockets that are not UDP of the address's family, run as made. */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <netinet/udp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "seccomp_exec.h"

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#define IOV_MAX_READ 64
#define CONTROL_MAX 1024
#define GSO_MAX 65536           /* a UDP_SEGMENT send, all segments */
#define BATCH_MAX 64            /* messages of one sendmmsg() (fewer is a valid answer) */

/* The largest segment of a send with this ancillary data: its UDP_SEGMENT size, else total. */
static size_t segment_of(const struct msghdr *mh, size_t total)
{
	struct cmsghdr *cm;

	for (cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR((struct msghdr *)mh, cm))
		if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_SEGMENT &&
		    cm->cmsg_len >= CMSG_LEN(sizeof(uint16_t)) &&
		    CMSG_DATA(cm) + sizeof(uint16_t) <=
			    (unsigned char *)mh->msg_control + mh->msg_controllen) {
			uint16_t gso;
			memcpy(&gso, CMSG_DATA(cm), sizeof(gso));
			return gso && gso < total ? gso : total;
		}
	return total;
}

/* One message of the program's (prog: its msghdr, pointers into its memory) sent from s to
 * the endpoint: bytes sent, or -1 with errno; -2 when the call is gone (nothing sent). */
static ssize_t send_one(const struct call *c, int s, const struct msghdr *prog, int flags,
			const struct tp_addr *dst, const struct sockaddr_storage *to, socklen_t tolen)
{
	struct iovec iov[IOV_MAX_READ], one;
	union {                         /* aligned for the cmsg headers */
		struct cmsghdr align;
		char bytes[CONTROL_MAX];
	} control;
	char *buf;
	struct msghdr mh;
	size_t total = 0, i;
	ssize_t r;

	if (prog->msg_iovlen > IOV_MAX_READ || prog->msg_controllen > CONTROL_MAX) {
		errno = EMSGSIZE;
		return -1;
	}
	if (target_read(c, (uintptr_t)prog->msg_iov, iov, prog->msg_iovlen * sizeof(iov[0])) != 0 ||
	    (prog->msg_controllen &&
	     target_read(c, (uintptr_t)prog->msg_control, control.bytes, prog->msg_controllen) != 0)) {
		errno = EFAULT;
		return -1;
	}
	for (i = 0; i < prog->msg_iovlen; i++) {
		if (iov[i].iov_len > GSO_MAX - total) {
			errno = EMSGSIZE;
			return -1;
		}
		total += iov[i].iov_len;
	}
	memset(&mh, 0, sizeof(mh));
	mh.msg_control = prog->msg_controllen ? control.bytes : NULL;
	mh.msg_controllen = prog->msg_controllen;
	if (segment_of(&mh, total) > (size_t)udp_payload_max(dst)) {
		errno = EMSGSIZE;       /* as the kernel's send with the tailnet's path MTU */
		return -1;
	}
	if (!(buf = malloc(total ? total : 1))) {
		errno = ENOMEM;
		return -1;
	}
	for (i = 0, total = 0; i < prog->msg_iovlen; total += iov[i].iov_len, i++)
		if (target_read(c, (uintptr_t)iov[i].iov_base, buf + total, iov[i].iov_len) != 0) {
			free(buf);
			errno = EFAULT;
			return -1;
		}
	if (!call_valid(c)) {
		free(buf);
		return -2;
	}
	one.iov_base = buf;
	one.iov_len = total;
	mh.msg_name = (void *)to;
	mh.msg_namelen = tolen;
	mh.msg_iov = &one;
	mh.msg_iovlen = 1;
	r = sendmsg(s, &mh, flags | MSG_NOSIGNAL);
	free(buf);
	return r;
}

static void answer_sent(const struct call *c, ssize_t r)
{
	if (r != -2)
		answer(c, r < 0 ? -1 : r, r < 0 ? errno : 0);
}

/* The program's socket fd, taken, with the endpoint to send to for dst: s >= 0 with *to;
 * else -1 and the call was answered or continued here. */
static int routed_socket(const struct call *c, int fd, const struct tp_addr *dst, int family,
			 struct sockaddr_storage *to, socklen_t *tolen)
{
	int s = target_fd(c, fd), r;

	if (s < 0) {
		/* a bad fd gets the kernel's answer; else fail rather than send unseen (with
		 * an exit node, that would leave from this host's own address) */
		if (errno != EBADF && call_valid(c))
			answer(c, 0, ENETUNREACH);
		else
			answer_continue(c);
		return -1;
	}
	r = udp_route_for((int)c->req->pid, s, family, dst, to, tolen);
	if (r > 0)
		return s;
	if (r == 0)
		answer_continue(c);     /* not UDP of that family, or the proxy says: direct */
	else
		answer(c, 0, errno);
	close(s);
	return -1;
}

void udp_sendto(const struct call *c, const struct tp_addr *dst, int family)
{
	const __u64 *a = c->req->data.args;
	struct sockaddr_storage to;
	size_t n = (size_t)a[2];
	socklen_t tolen;
	ssize_t r;
	char *buf;
	int s;

	if ((s = routed_socket(c, (int)a[0], dst, family, &to, &tolen)) < 0)
		return;
	if (n > (size_t)udp_payload_max(dst)) {
		r = -1;
		errno = EMSGSIZE;
	} else if (!(buf = malloc(n ? n : 1))) {
		r = -1;
		errno = ENOMEM;
	} else {
		if (target_read(c, a[1], buf, n) != 0) {
			r = -1;
			errno = EFAULT;
		} else if (!call_valid(c)) {
			r = -2;
		} else {
			r = sendto(s, buf, n, (int)a[3] | MSG_NOSIGNAL, (struct sockaddr *)&to, tolen);
		}
		free(buf);
	}
	answer_sent(c, r);
	close(s);
}

void udp_sendmsg(const struct call *c, const struct tp_addr *dst, int family)
{
	const __u64 *a = c->req->data.args;
	struct sockaddr_storage to;
	struct msghdr prog;
	socklen_t tolen;
	int s;

	if (target_read(c, a[1], &prog, sizeof(prog)) != 0) {
		answer(c, 0, EFAULT);
		return;
	}
	if ((s = routed_socket(c, (int)a[0], dst, family, &to, &tolen)) < 0)
		return;
	answer_sent(c, send_one(c, s, &prog, (int)a[2], dst, &to, tolen));
	close(s);
}

/* Each message to its own destination; the batch ends early (a valid, shorter answer) at
 * the first one not routed, whose turn comes when the program sends the rest again. */
void udp_sendmmsg(const struct call *c, const struct tp_addr *first, int family)
{
	const __u64 *a = c->req->data.args;
	unsigned int vlen = a[2] < BATCH_MAX ? (unsigned int)a[2] : BATCH_MAX, i;
	struct sockaddr_storage to, ss;
	struct tp_addr dst = *first;
	struct mmsghdr mm;
	socklen_t tolen;
	int s, mapped;
	ssize_t r = 0;

	if ((s = routed_socket(c, (int)a[0], first, family, &to, &tolen)) < 0)
		return;
	for (i = 0; i < vlen; i++) {
		uint64_t at = a[1] + (uint64_t)i * sizeof(mm);
		unsigned int len;

		if (target_read(c, at, &mm, sizeof(mm)) != 0) {
			r = -1;
			errno = EFAULT;
			break;
		}
		if (i > 0) {
			socklen_t nl = mm.msg_hdr.msg_namelen;

			if (!mm.msg_hdr.msg_name || nl < sizeof(sa_family_t) || nl > sizeof(ss) ||
			    target_read(c, (uintptr_t)mm.msg_hdr.msg_name, &ss, nl) != 0 ||
			    sa_to_tp((struct sockaddr *)&ss, nl, &dst, &mapped) != 0 ||
			    ss.ss_family != family || !udp_routed(&dst) || dst.port == 53 ||
			    udp_route_for((int)c->req->pid, s, family, &dst, &to, &tolen) != 1)
				break;
		}
		r = send_one(c, s, &mm.msg_hdr, (int)a[3], &dst, &to, tolen);
		if (r < 0)
			break;
		len = (unsigned int)r;
		if (target_write(c, at + offsetof(struct mmsghdr, msg_len), &len, sizeof(len)) != 0) {
			r = -1;
			errno = EFAULT;
			break;
		}
	}
	close(s);
	if (r == -2)
		return;
	if (i > 0)
		answer(c, i, 0);        /* what was sent; a later error shows on the next call */
	else
		answer_sent(c, r);
}

void udp_connect(const struct call *c, int s, const struct tp_addr *dst, int family,
		 const struct sockaddr *sa, socklen_t len)
{
	struct sockaddr_storage to;
	socklen_t tolen;
	int r;

	if (!call_valid(c))
		return;
	r = udp_route_for((int)c->req->pid, s, family, dst, &to, &tolen);
	if (r < 0) {
		answer(c, 0, errno);
		return;
	}
	/* direct, or not UDP of that family: made here as asked (the address we read is the one
	 * we decided on), with the kernel's own answer */
	r = r > 0 ? connect(s, (struct sockaddr *)&to, tolen) : connect(s, sa, len);
	answer(c, 0, r == 0 ? 0 : errno);
}
