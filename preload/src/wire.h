/* The channel's wire format (docs/CHANNEL.md), in one place for every request builder:
 * an 8-byte header (version, op, flags, seq) and 20-byte addresses. */
#ifndef TAILPROXY_WIRE_H
#define TAILPROXY_WIRE_H

#include <stdint.h>

#define WIRE_VERSION 1
#define HDR 8
#define ADDR 20                 /* family, 0, port (host order), 16 address bytes */
#define CONNECT_LEN 288         /* HDR + ADDR + timeout + hostlen + host */

#define OP_CONNECT 1
#define OP_STATUS 2
#define OP_PEER 3
#define OP_RESOLVE 4
#define OP_REVERSE 5
#define OP_QUERY 6
#define OP_LISTEN 7
#define OP_UNLISTEN 8
#define OP_UDP 9

#define FLAG_BLOCKING 1         /* CONNECT: reply once dialled */
#define FLAG_PARKED 2           /* CONNECT: already parked, no reply */
#define FLAG_IDN 1              /* RESOLVE */
#define FLAG_SEARCH 1           /* QUERY */
#define FLAG_LISTEN_UDP 1       /* LISTEN: a UDP port */

struct tp_addr {            /* a TCP endpoint, IPv4 in addr[0..3] */
	uint8_t family;         /* 4 or 6 */
	uint16_t port;          /* host order */
	uint8_t addr[16];
};

#endif
