/* channel.c: the client side of the proxy's channel (docs/CHANNEL.md), shared by both
 * interception front ends (the LD_PRELOAD hooks and the seccomp supervisor). It calls libc
 * only through real.h and needs from the rest of the library only config.c (the channel's
 * path and parking listeners), log.c (the one "channel down" line) and addr.c (clocks). */
#ifndef TAILPROXY_CHANNEL_H
#define TAILPROXY_CHANNEL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "wire.h"

#ifndef HIDDEN
#define HIDDEN __attribute__((visibility("hidden")))
#endif

/* Result of a request: 0 with *err = reply err, or -1 with the local errno:
 * ENETDOWN (channel unreachable, already reported), EINTR, ETIMEDOUT (wait bound hit),
 * EMFILE/ENFILE (no fd left for the channel: the program's own limit). */
HIDDEN int chan_connect(const struct tp_addr *dst, int fd, int blocking, int wait_ms,
			int *err, uint64_t *token);
HIDDEN int chan_status(uint64_t token, int *err);
HIDDEN int chan_peer(const struct tp_addr *local, int *err, struct tp_addr *dst);
/* Non-blocking fast path: park fd at `park` ourselves, then register it with a CONNECT that
 * needs no reply (FLAG_PARKED; token = pid << 32 | seq). 0 on success; -1 with errno
 * ENETDOWN (channel unusable: fd untouched) or EAGAIN (could not park: fd untouched). */
HIDDEN int chan_connect_parked(const struct tp_addr *dst, int fd, const struct sockaddr *park,
			       socklen_t parklen, uint64_t *token);
/* LISTEN/UNLISTEN notices for the exporter about process pid's port (send only; 0 or -1
 * with errno). */
HIDDEN int chan_listen_notice(int op, int family, uint16_t port, int pid);
/* Name-service requests (names.c builds the bodies): the header is filled in here; the reply
 * is checked for version and op. Returns the reply length or -1 with errno (ENETDOWN: the
 * channel is unreachable, already reported; ETIMEDOUT: no reply within wait_ms). */
HIDDEN int chan_request(int op, int flags, uint8_t *req, size_t reqlen, uint8_t *rep,
			size_t replen, int wait_ms);

#endif
