/* connect(): TCP to a non-local, non-bypassed destination that the proxy
 * routes is handed to the proxy with the program's own socket attached; the
 * proxy dials and then connects that socket to its relay (docs/CHANNEL.md).
 * What the proxy would only dial directly (its routing table, table.c) and
 * everything else goes to the real connect() untouched. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/time.h>

#include "tailproxy.h"

static int sockopt_int(int fd, int level, int name, int *v)
{
	socklen_t len = sizeof(*v);

	*v = 0;
	return real_getsockopt(fd, level, name, v, &len);
}

static void verbose(int fd, const struct tp_addr *dst, int err)
{
	struct tp_log l;
	const char *name = tp_errname(err);

	log_init(&l);
	log_str(&l, "tailproxy: connect fd ");
	log_num(&l, fd);
	log_str(&l, " to ");
	log_addr(&l, dst);
	log_str(&l, ": ");
	if (err == 0) {
		log_str(&l, "connected");
	} else if (err == EINPROGRESS) {
		log_str(&l, "in progress");
	} else {
		log_errno(&l, err);
		if (name) {
			log_str(&l, " (");
			log_str(&l, name);
			log_str(&l, ")");
		}
	}
	log_flush(&l);
}

/* The kernel's own connect on the program's socket: loopback, bypassed, or a
 * destination the routing table says the proxy would only dial directly. */
static int connect_direct(int fd, const struct sockaddr *sa, socklen_t len, int e0)
{
	struct fd_info fi;

	/* remembered so getpeername() never asks the proxy about it */
	memset(&fi, 0, sizeof(fi));
	fi.ino = sock_ino(fd);
	fi.state = FD_DIRECT;
	fdt_set(fd, &fi);
	errno = e0;
	return real_connect(fd, sa, len);
}

static void verbose_direct(int fd, const struct tp_addr *dst);

/* What the proxy would only dial directly (the routing table): the kernel's
 * connect, whatever the socket's kind (anything not ours goes there too), and
 * no syscall of ours on the way (an fstat in fdt_get at most, once per reuse
 * of an fd number that held one of our sockets), so it costs what a plain
 * connect costs.
 * getpeername() needs no entry: the kernel's peer is the destination. */
static int connect_by_table(int fd, const struct sockaddr *sa, socklen_t len,
			    const struct tp_addr *dst, int known, int e0)
{
	int type;

	if (tp_config()->verbose && sockopt_int(fd, SOL_SOCKET, SO_TYPE, &type) == 0 &&
	    type == SOCK_STREAM)
		verbose_direct(fd, dst);        /* TCP only, as for the connects we hand over */
	if (!known)
		fdt_clear(fd);  /* a former socket's entry: spares the next connect() an fstat */
	errno = e0;
	return real_connect(fd, sa, len);
}

static void verbose_direct(int fd, const struct tp_addr *dst)
{
	struct tp_log l;

	log_init(&l);
	log_str(&l, "tailproxy: connect fd ");
	log_num(&l, fd);
	log_str(&l, " to ");
	log_addr(&l, dst);
	log_str(&l, ": direct (not routed by the proxy)");
	log_flush(&l);
}

/* connect() again on a socket whose proxied connect is still pending (after
 * EINPROGRESS, EINTR or an SO_SNDTIMEO expiry): never a second dial. Answer
 * as Linux does for a connect in flight: non-blocking, EALREADY (or the
 * outcome once known); blocking, wait for the outcome, bounded by
 * SO_SNDTIMEO (then EALREADY) and ended by a signal (EINTR). */
static int wait_pending(int fd, const struct sockaddr *sa, socklen_t len,
			const struct fd_info *fi, int blocking, int e0, int timeout_err)
{
	int ms = blocking ? send_timeout_ms(fd) : 0, err, ret = -1;
	int64_t deadline = now_ns() + (int64_t)ms * 1000000;
	sigset_t all, old;

	/* Signals wait for ppoll(), so one arriving between two looks at the
	 * socket still ends the call with EINTR, as in the kernel's wait. */
	if (blocking) {
		sigfillset(&all);
		sigprocmask(SIG_BLOCK, &all, &old);
	}
	for (;;) {
		struct pollfd p = {.fd = fd, .events = POLLOUT};
		struct timespec ts = {0, 5000000}, *tsp = NULL;
		int st = tcp_state(fd), r, v = -1;

		/* Never the kernel's connect() while pending: it could see the
		 * proxy's hand-over half done (or even dial dst itself). */
		if (st == TCP_SYN_SENT && blocking) {
			/* parked: wait below */
		} else if (st == TCP_CLOSE && !fi->token && (v = so_error_of(fd)) == 0) {
			/* an interrupted blocking connect the proxy is still dialling */
			if (!blocking) {
				errno = EALREADY;
				goto out;
			}
		} else if (pending_outcome_v(fd, fi->token, v < 0 ? so_error_of(fd) : v, &err)) {
			fdt_update(fd, fi->ino, FD_DONE, err ? 0 : local_port(fd, NULL));
			if (err) {
				/* the kernel's failed connect leaves SO_ERROR clear, even
				 * when the closed port's refusal landed after outcome.c
				 * stopped waiting for it */
				so_error_of(fd);   /* clears it */
				errno = err;
				goto out;
			}
			/* connected: the first connect() to learn it gets 0, as the
			 * kernel gives; the socket is the kernel's from here */
			if (real_connect(fd, sa, len) != 0 && errno != EISCONN)
				goto out;
			errno = e0;
			ret = 0;
			goto out;
		} else if (!blocking) {
			errno = EALREADY;
			goto out;
		}
		if (st != TCP_SYN_SENT)
			tsp = &ts;      /* not parked yet: nothing to poll, look again shortly */
		if (ms > 0) {
			int64_t left = deadline - now_ns();
			if (left <= 0) {
				errno = timeout_err;
				goto out;
			}
			if (!tsp || left < ts.tv_nsec) {
				ts.tv_sec = left / 1000000000;
				ts.tv_nsec = left % 1000000000;
				tsp = &ts;
			}
		}
		/* parked: writable (or error) when the proxy moves it on */
		r = ppoll(st == TCP_SYN_SENT ? &p : NULL, st == TCP_SYN_SENT ? 1 : 0, tsp, &old);
		if (r < 0 && errno == EINTR)
			goto out;
	}
out:
	if (blocking) {
		int e = errno;
		sigprocmask(SIG_SETMASK, &old, NULL);
		errno = e;
	}
	return ret;
}

static int again(int fd, const struct sockaddr *sa, socklen_t len, const struct fd_info *fi,
		 int blocking, int e0)
{
	return wait_pending(fd, sa, len, fi, blocking, e0, EALREADY);
}

/* Fast path: park the socket here and register it with the proxy without
 * waiting for a reply (chan_connect_parked). A blocking socket is parked with
 * O_NONBLOCK set for that one call, then waits on its own socket (SO_SNDTIMEO
 * expiry: EINPROGRESS; a signal: EINTR; the connect goes on either way).
 * Returns 1 when it took the connect (result in *ret), 0 to use the full path. */
static int connect_parked(int fd, const struct sockaddr *sa, socklen_t len, struct fd_info *fi,
			  int domain, int fl, int blocking, int e0, int *ret)
{
	const struct tp_config *c = tp_config();
	const struct sockaddr *park = NULL;
	socklen_t plen = 0;
	uint64_t token;
	int r, e;

	if (domain == AF_INET && c->park4.sin_port) {
		park = (const struct sockaddr *)&c->park4;
		plen = sizeof(c->park4);
	} else if (domain == AF_INET6 && c->park6.sin6_port) {
		park = (const struct sockaddr *)&c->park6;
		plen = sizeof(c->park6);
	}
	if (!park)
		return 0;
	if (blocking && fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0)
		return 0;
	r = chan_connect_parked(&fi->dst, fd, park, plen, &token);
	e = errno;
	if (blocking)
		fcntl(fd, F_SETFL, fl);
	if (r != 0) {
		if (e != ENETDOWN)
			return 0;       /* e.g. parking impossible: the full path */
		if (c->verbose)
			verbose(fd, &fi->dst, ENETDOWN);
		errno = ENETDOWN;
		*ret = -1;
		return 1;
	}
	fi->token = token;
	fdt_set(fd, fi);
	if (!blocking) {
		if (c->verbose)
			verbose(fd, &fi->dst, EINPROGRESS);
		errno = EINPROGRESS;
		*ret = -1;
		return 1;
	}
	*ret = wait_pending(fd, sa, len, fi, 1, e0, EINPROGRESS);
	if (c->verbose) {
		e = errno;
		verbose(fd, &fi->dst, *ret == 0 ? 0 : e);
		errno = e;
	}
	return 1;
}

EXPORT int connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	const struct tp_config *c = tp_config();
	struct tp_addr dst;
	struct fd_info fi;
	uint64_t ino, token = 0;
	int e0 = errno, mapped, domain, st, fl, blocking, known, pending, err = 0;

	if (c->active && dns_redirect_connect(fd, sa, len, &err))   /* port 53: udpdns.c */
		return err;
	if (c->active && udp_redirect_connect(fd, sa, len, &err))   /* UDP: udp.c */
		return err;
	if (!c->active || sa_to_tp(sa, len, &dst, &mapped) != 0) {
		errno = e0;
		return real_connect(fd, sa, len);
	}
	/* A connect() again on a socket handed over before the table changed
	 * must still wait for the proxy's outcome, so this comes first. */
	known = fdt_get(fd, &fi);
	pending = known && fi.state == FD_PENDING;
	if (!pending && !tp_goes_direct(c, &dst) && tp_table_direct(&dst))
		return connect_by_table(fd, sa, len, &dst, known, e0);
	if (!tcp_socket_of(fd, sa->sa_family, mapped, &domain)) {
		errno = e0;
		return real_connect(fd, sa, len);
	}
	if (tp_goes_direct(c, &dst))
		return connect_direct(fd, sa, len, e0);
	fl = fcntl(fd, F_GETFL);
	blocking = fl >= 0 && !(fl & O_NONBLOCK);
	if (pending)
		return again(fd, sa, len, &fi, blocking, e0);
	ino = sock_ino(fd);
	st = tcp_state(fd);
	if (st != TCP_CLOSE) {          /* connected or listening: the kernel's EISCONN/EINVAL */
		errno = e0;
		return real_connect(fd, sa, len);
	}
	fi.ino = ino;
	fi.token = 0;
	fi.mapped = mapped;
	fi.dst = dst;
	fi.lport = 0;
	fi.state = FD_PENDING;

	{
		int ret;

		if (connect_parked(fd, sa, len, &fi, domain, fl, blocking, e0, &ret))
			return ret;
	}
	if (chan_connect(&dst, fd, blocking, blocking ? send_timeout_ms(fd) : 0, &err,
			 &token) != 0) {
		err = errno;
		if (err == ETIMEDOUT && blocking)
			err = EINPROGRESS;      /* SO_SNDTIMEO expired, like Linux */
		else if (err == ETIMEDOUT)
			err = ENETDOWN;         /* the proxy did not answer a quick request */
		if (err == EINTR || err == EINPROGRESS)
			fdt_set(fd, &fi);       /* the proxy goes on in the background */
		if (c->verbose)
			verbose(fd, &dst, err);
		errno = err;
		return -1;
	}
	fi.token = token;
	if (err == 0 && blocking) {
		fi.state = FD_DONE;
		fi.lport = local_port(fd, NULL);
	} else if (err == 0) {
		err = EINPROGRESS;
	} else {
		/* failed: should the proxy have failed the socket against its
		 * closed port, that ECONNREFUSED must not linger; the connect's
		 * own return is where the program learns the error */
		fi.state = FD_DONE;
		so_error_of(fd);   /* clears it */
	}
	fdt_set(fd, &fi);
	if (c->verbose)
		verbose(fd, &dst, err);
	if (err) {
		errno = err;
		return -1;
	}
	errno = e0;
	return 0;
}
