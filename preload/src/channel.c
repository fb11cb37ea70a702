/* The request/reply codec of docs/CHANNEL.md and one fresh SOCK_SEQPACKET
 * connection per request, closed before returning: we own no fd that a
 * program could close (closefrom) or share across fork. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "channel.h"
#include "real.h"
#include "tailproxy.h"

#define QUICK_WAIT_MS 5000     /* bound for replies that need no dial */

static uint32_t seq_counter;

static void put_hdr(uint8_t *b, int op, int flags)
{
	uint16_t f = (uint16_t)flags;
	uint32_t seq = __atomic_add_fetch(&seq_counter, 1, __ATOMIC_RELAXED);

	b[0] = WIRE_VERSION;
	b[1] = (uint8_t)op;
	memcpy(b + 2, &f, 2);
	memcpy(b + 4, &seq, 4);
}

static void put_addr(uint8_t *b, const struct tp_addr *a)
{
	b[0] = a->family;
	b[1] = 0;
	memcpy(b + 2, &a->port, 2);
	memcpy(b + 4, a->addr, 16);
}

static int get_addr(const uint8_t *b, struct tp_addr *a)
{
	memset(a, 0, sizeof(*a));
	if (b[0] != 4 && b[0] != 6)
		return -1;
	a->family = b[0];
	memcpy(&a->port, b + 2, 2);
	memcpy(a->addr, b + 4, a->family == 4 ? 4 : 16);
	return 0;
}

/* One request, one reply. wait_ms < 0: no bound. interruptible: a signal
 * ends the wait with EINTR (a blocking connect); signals are then blocked
 * until ppoll() so one arriving anywhere in the call is not lost; otherwise
 * EINTR is retried (quick requests). Returns the reply length (header
 * included) or -1 with errno set. */
/* A fresh socket connected to the proxy's at TAILPROXY_SOCKET + suffix; -1 with
 * errno on failure. */
static int open_unix(const struct tp_config *c, int type, const char *suffix)
{
	struct sockaddr_un sun;
	size_t n = strlen(suffix);
	int s, e;

	if (c->path_len == 0 || c->path_len + n >= sizeof(sun.sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	s = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -1;
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	memcpy(sun.sun_path, c->path, c->path_len);
	memcpy(sun.sun_path + c->path_len, suffix, n);
	while (real_connect(s, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
		if (errno != EINTR) {
			e = errno;
			real_close(s);
			errno = e;
			return -1;
		}
	}
	return s;
}

/* A fresh connection to the proxy's channel. */
static int open_channel(const struct tp_config *c)
{
	return open_unix(c, SOCK_SEQPACKET, "");
}

/* The proxy's datagram socket for parked CONNECTs: no accept and no reply, the
 * cheapest registration. */
static int open_dgram(const struct tp_config *c)
{
	return open_unix(c, SOCK_DGRAM, ".dgram");
}

/* One message, with `sendfd` attached when >= 0 (SCM_RIGHTS). */
static ssize_t send_msg_flags(int s, const uint8_t *req, size_t reqlen, int sendfd, int flags)
{
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} cm;
	struct iovec iov;
	struct msghdr mh;
	ssize_t n;

	memset(&mh, 0, sizeof(mh));
	iov.iov_base = (void *)req;
	iov.iov_len = reqlen;
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	if (sendfd >= 0) {
		struct cmsghdr *ch;
		memset(&cm, 0, sizeof(cm));
		mh.msg_control = cm.buf;
		mh.msg_controllen = sizeof(cm.buf);
		ch = CMSG_FIRSTHDR(&mh);
		ch->cmsg_level = SOL_SOCKET;
		ch->cmsg_type = SCM_RIGHTS;
		ch->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(ch), &sendfd, sizeof(int));
	}
	while ((n = real_sendmsg(s, &mh, MSG_NOSIGNAL | flags)) < 0 && errno == EINTR)
		;
	return n;
}

static ssize_t send_msg(int s, const uint8_t *req, size_t reqlen, int sendfd)
{
	return send_msg_flags(s, req, reqlen, sendfd, 0);
}

static int request(const uint8_t *req, size_t reqlen, int sendfd, uint8_t *rep,
		   size_t replen, int wait_ms, int interruptible)
{
	const struct tp_config *c = tp_config();
	struct iovec iov;
	struct msghdr mh;
	int64_t deadline = wait_ms >= 0 ? now_ns() + (int64_t)wait_ms * 1000000 : 0;
	sigset_t all, old;
	ssize_t n;
	int s = -1, ret = -1, err = 0, why = 0;

	if (interruptible) {
		sigfillset(&all);
		sigprocmask(SIG_BLOCK, &all, &old);
	}
	s = open_channel(c);
	if (s < 0) {
		why = errno;
		/* out of fds is the program's own limit, not a channel problem: its errno,
		 * which a program understands, and no "channel down" line */
		if (why == EMFILE || why == ENFILE) {
			err = why;
			goto out;
		}
		goto down;
	}
	n = send_msg(s, req, reqlen, sendfd);
	if (n < 0) {
		why = errno;
		goto down;
	}
	if (replen == 0) {               /* a notice: nothing to wait for */
		ret = 0;
		goto out;
	}

	for (;;) {
		struct pollfd p = {.fd = s, .events = POLLIN};
		struct timespec ts, *tsp = NULL;
		int r;

		if (wait_ms >= 0) {
			int64_t left = deadline - now_ns();
			if (left < 0)
				left = 0;
			ts.tv_sec = left / 1000000000;
			ts.tv_nsec = left % 1000000000;
			tsp = &ts;
		}
		r = ppoll(&p, 1, tsp, interruptible ? &old : NULL);
		if (r > 0)
			break;
		if (r == 0) {
			err = ETIMEDOUT;
			goto out;
		}
		if (errno != EINTR) {
			why = errno;
			goto down;
		}
		if (interruptible) {
			err = EINTR;
			goto out;
		}
	}

	/* No control buffer: any fd sent back is dropped by the kernel. */
	memset(&mh, 0, sizeof(mh));
	iov.iov_base = rep;
	iov.iov_len = replen;
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	while ((n = real_recvmsg(s, &mh, MSG_DONTWAIT)) < 0 && errno == EINTR)
		;
	if (n < 0) {
		why = errno;
		goto down;
	}
	if (n == 0) {                    /* proxy closed without replying */
		why = ECONNRESET;
		goto down;
	}
	if ((size_t)n < HDR || rep[0] != WIRE_VERSION || rep[1] != req[1]) {
		why = EPROTO;
		goto down;
	}
	ret = (int)n;
	goto out;
down:
	/* The channel is unusable: ENETDOWN, and the one stderr line. */
	tp_warn_channel_down(c->path, why);
	err = ENETDOWN;
out:
	if (s >= 0)
		real_close(s);
	if (interruptible)
		sigprocmask(SIG_SETMASK, &old, NULL);
	if (ret < 0)
		errno = err;
	return ret;
}

static int reply_err(const uint8_t *rep)
{
	int32_t e;

	memcpy(&e, rep + 4, 4);
	return e < 0 ? EPROTO : e;
}

int chan_connect(const struct tp_addr *dst, int fd, int blocking, int wait_ms, int *err,
		 uint64_t *token)
{
	uint8_t req[CONNECT_LEN], rep[64];
	uint32_t timeout = 0;      /* the dial goes on past our wait, like the kernel's */
	int n;

	memset(req, 0, sizeof(req));
	put_hdr(req, OP_CONNECT, blocking ? FLAG_BLOCKING : 0);
	put_addr(req + HDR, dst);
	memcpy(req + HDR + ADDR, &timeout, 4);
	req[HDR + ADDR + 4] = 0;   /* hostlen */
	n = request(req, sizeof(req), fd, rep, sizeof(rep),
		    blocking ? wait_ms : QUICK_WAIT_MS, blocking);
	if (n < 0)
		return -1;
	*err = reply_err(rep);
	*token = 0;
	if (*err == 0) {
		if (n < HDR + 8) {
			*err = EPROTO;
			return 0;
		}
		memcpy(token, rep + HDR, 8);
	}
	return 0;
}

int chan_status(uint64_t token, int *err)
{
	uint8_t req[HDR + 8], rep[64];
	int n;

	put_hdr(req, OP_STATUS, 0);
	memcpy(req + HDR, &token, 8);
	n = request(req, sizeof(req), -1, rep, sizeof(rep), QUICK_WAIT_MS, 0);
	if (n < 0)
		return -1;
	*err = reply_err(rep);
	return 0;
}

int chan_peer(const struct tp_addr *local, int *err, struct tp_addr *dst)
{
	uint8_t req[HDR + ADDR], rep[64];
	int n;

	put_hdr(req, OP_PEER, 0);
	put_addr(req + HDR, local);
	n = request(req, sizeof(req), -1, rep, sizeof(rep), QUICK_WAIT_MS, 0);
	if (n < 0)
		return -1;
	*err = reply_err(rep);
	if (*err == 0 && (n < HDR + ADDR || get_addr(rep + HDR, dst) != 0))
		*err = EPROTO;
	return 0;
}

int chan_listen_notice(int op, int family, uint16_t port, int pid)
{
	uint8_t req[HDR + 8];

	memset(req, 0, sizeof(req));
	put_hdr(req, op, 0);
	req[HDR] = (uint8_t)family;
	memcpy(req + HDR + 2, &port, 2);
	memcpy(req + HDR + 4, &pid, 4);
	return request(req, sizeof(req), -1, NULL, 0, 0, 0);
}

int chan_request(int op, int flags, uint8_t *req, size_t reqlen, uint8_t *rep, size_t replen,
		 int wait_ms)
{
	put_hdr(req, op, flags);
	return request(req, reqlen, -1, rep, replen, wait_ms, 0);
}

int chan_connect_parked(const struct tp_addr *dst, int fd, const struct sockaddr *park,
			socklen_t parklen, uint64_t *token)
{
	const struct tp_config *c = tp_config();
	struct sockaddr unspec = {.sa_family = AF_UNSPEC};
	uint8_t req[CONNECT_LEN];
	uint32_t seq;
	int s, why, r, dgram;

	/* 1. the channel first: if the proxy is gone the socket stays untouched.
	 * The datagram socket if we can (a full queue sends us to the full path),
	 * else a stream connection. */
	s = open_dgram(c);
	dgram = s >= 0;
	if (!dgram)
		s = open_channel(c);
	if (s < 0) {
		why = errno;
		if (why == ENAMETOOLONG || why == EMFILE || why == ENFILE) {
			errno = EAGAIN;         /* the full path reports it */
			return -1;
		}
		tp_warn_channel_down(c->path, why);
		errno = ENETDOWN;
		return -1;
	}
	/* 2. park: SYN_SENT towards a listener whose queue is full */
	r = real_connect(fd, park, parklen);
	if (r == 0 || errno != EINPROGRESS) {
		if (r == 0)                     /* the parking listener accepted: undo */
			real_connect(fd, &unspec, sizeof(unspec));
		so_error_of(fd);
		real_close(s);
		errno = EAGAIN;
		return -1;
	}
	/* 3. register; the proxy replies nothing */
	memset(req, 0, sizeof(req));
	put_hdr(req, OP_CONNECT, FLAG_PARKED);
	memcpy(&seq, req + 4, 4);
	put_addr(req + HDR, dst);
	r = send_msg_flags(s, req, sizeof(req), fd, dgram ? MSG_DONTWAIT : 0) < 0;
	why = errno;
	real_close(s);
	if (r && dgram && (why == EAGAIN || why == EWOULDBLOCK)) {
		/* the datagram queue is full (a burst of connects): the stream channel,
		 * which queues as many as the listener's backlog */
		s = open_channel(c);
		r = s < 0 || send_msg(s, req, sizeof(req), fd) < 0;
		why = errno;
		if (s >= 0)
			real_close(s);
	}
	if (r) {
		real_connect(fd, &unspec, sizeof(unspec));      /* not parked after all */
		so_error_of(fd);
		tp_warn_channel_down(c->path, why);
		errno = ENETDOWN;
		return -1;
	}
	*token = ((uint64_t)(uint32_t)getpid() << 32) | seq;
	return 0;
}
