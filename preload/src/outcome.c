/* The outcome of a connect handed over to the proxy, as the program must see it: a proxied
 * connect that failed shows the kernel's ECONNREFUSED (the proxy fails the socket against a
 * closed loopback port); the real errno is kept by the proxy under the connect's token.
 * Shared by both front ends: the preload's hooks (sockopt.c, connect.c) and the seccomp
 * supervisor (../exec/). */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <string.h>

#include "tailproxy.h"

#define WINDOW_NS 2000000       /* bound on waiting out the relay hand-over */
/* Bound on waiting for the kernel to show a failure the proxy has recorded: the proxy moves
 * the socket to the closed port just after, but on a loaded machine that can take more than
 * WINDOW_NS, and an ECONNREFUSED landing after we returned would linger in SO_ERROR. Only
 * failed connects wait here. */
#define FAIL_WINDOW_NS 250000000

/* The proxy's errno for the token: 1 if final (0 = connected). */
static int final_errno(uint64_t token, int *err)
{
	int e0 = errno;

	*err = EINPROGRESS;
	if (!token || chan_status(token, err) != 0) {
		errno = e0;
		*err = EINPROGRESS;
		return 0;
	}
	return *err != EINPROGRESS && *err != ENOENT;
}

/* The proxy failed the socket: ask for the real errno, briefly retrying in
 * case the proxy has not recorded it yet. */
static int failed(uint64_t token, int kernel_err)
{
	int64_t end = now_ns() + WINDOW_NS;
	int err;

	for (;;) {
		if (final_errno(token, &err))
			return err ? err : kernel_err;
		if (err == ENOENT || !token || now_ns() >= end)
			return kernel_err;
		sched_yield();
	}
}

static int connected_state(int st)
{
	return st >= 0 && st != TCP_SYN_SENT && st != TCP_CLOSE && st != TCP_LISTEN;
}

/* The proxy has an outcome e and is moving the socket to the relay (e == 0)
 * or to the closed port. Wait (bounded) until the kernel agrees, consuming
 * its ECONNREFUSED, so what we report and what poll() shows match.
 * Returns 1 once it landed. */
static int settle(int fd, int e)
{
	int64_t end = now_ns() + (e == 0 ? WINDOW_NS : FAIL_WINDOW_NS);

	for (;;) {
		int st = tcp_state(fd);

		if (e == 0 ? connected_state(st)
			   : st == TCP_CLOSE && so_error_of(fd) == ECONNREFUSED)
			return 1;
		if (now_ns() >= end)
			return 0;
		sched_yield();
	}
}

/* Outcome of our pending connect on fd, given SO_ERROR already read as v:
 * 1 with *err (0 = connected) once known, 0 while in progress. */
int pending_outcome_v(int fd, uint64_t token, int v, int *err)
{
	int64_t end;
	int st = tcp_state(fd), seen = v, e;

	if (v == ECONNREFUSED) {
		*err = failed(token, v);
		return 1;
	}
	if (v && v != ECONNRESET) {
		*err = v;
		return 1;
	}
	if (connected_state(st)) {
		*err = 0;
		return 1;
	}
	/* SYN_SENT is parked (no outcome yet) or already on its way to the relay
	 * or the closed port; CLOSE/ECONNRESET is the hand-over in between. The
	 * proxy records the outcome before it moves the socket. */
	if (final_errno(token, &e)) {
		if (settle(fd, e) || e != 0) {
			*err = e;
			return 1;
		}
		/* success long ago, and the relayed connection has since died */
		*err = seen;
		return 1;
	}
	if (st == TCP_SYN_SENT && v == 0)
		return 0;               /* parked: in progress */

	/* No outcome recorded, yet not parked: wait out a hand-over briefly in
	 * case the proxy records late, then ask once more. */
	end = now_ns() + WINDOW_NS;
	while (now_ns() < end) {
		sched_yield();
		st = tcp_state(fd);
		if (connected_state(st)) {
			*err = 0;
			return 1;
		}
		v = so_error_of(fd);
		if (v == ECONNREFUSED) {
			*err = failed(token, v);
			return 1;
		}
		if (v && v != ECONNRESET) {
			*err = v;
			return 1;
		}
		if (v)
			seen = v;
	}
	if (final_errno(token, err)) {
		if (*err == 0 && !connected_state(tcp_state(fd)))
			*err = seen;
		return 1;
	}
	return 0;
}
