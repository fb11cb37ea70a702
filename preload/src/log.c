/* stderr lines built on the stack and written with one write(2): no stdio,
 * no malloc, so it is usable from any hook, in a signal handler or after fork. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "tailproxy.h"

void log_init(struct tp_log *l)
{
	l->n = 0;
}

void log_str(struct tp_log *l, const char *s)
{
	while (*s && l->n < sizeof(l->buf) - 1)
		l->buf[l->n++] = *s++;
}

void log_num(struct tp_log *l, long v)
{
	char tmp[24];
	int i = 0;
	unsigned long u = v < 0 ? -(unsigned long)v : (unsigned long)v;

	do {
		tmp[i++] = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (v < 0)
		tmp[i++] = '-';
	while (i && l->n < sizeof(l->buf) - 1)
		l->buf[l->n++] = tmp[--i];
}

static void log_hex16(struct tp_log *l, unsigned v)
{
	static const char hx[] = "0123456789abcdef";
	char tmp[4];
	int i = 0;

	do {
		tmp[i++] = hx[v & 15];
		v >>= 4;
	} while (v);
	while (i && l->n < sizeof(l->buf) - 1)
		l->buf[l->n++] = tmp[--i];
}

/* 1.2.3.4:80 or [2001:db8::1]:80 (longest zero run compressed, RFC 5952) */
void log_addr(struct tp_log *l, const struct tp_addr *a)
{
	int i;

	if (a->family == 4) {
		for (i = 0; i < 4; i++) {
			if (i)
				log_str(l, ".");
			log_num(l, a->addr[i]);
		}
	} else {
		unsigned w[8];
		int best = -1, bestlen = 1, run = 0;

		for (i = 0; i < 8; i++)
			w[i] = (unsigned)a->addr[2 * i] << 8 | a->addr[2 * i + 1];
		for (i = 0; i < 8; i++) {
			run = w[i] ? 0 : run + 1;
			if (run > bestlen) {
				bestlen = run;
				best = i - run + 1;
			}
		}
		log_str(l, "[");
		for (i = 0; i < 8; i++) {
			if (i == best) {
				log_str(l, "::");
				i += bestlen - 1;
				continue;
			}
			if (i && i != best + bestlen)
				log_str(l, ":");
			log_hex16(l, w[i]);
		}
		log_str(l, "]");
	}
	log_str(l, ":");
	log_num(l, a->port);
}

static const struct {
	int err;
	const char *name, *text;
} errs[] = {
	{EPERM, "EPERM", "Operation not permitted"},
	{ENOENT, "ENOENT", "No such file or directory"},
	{EINTR, "EINTR", "Interrupted system call"},
	{EBADF, "EBADF", "Bad file descriptor"},
	{EAGAIN, "EAGAIN", "Resource temporarily unavailable"},
	{ENOMEM, "ENOMEM", "Cannot allocate memory"},
	{EACCES, "EACCES", "Permission denied"},
	{EINVAL, "EINVAL", "Invalid argument"},
	{EMFILE, "EMFILE", "Too many open files"},
	{ENFILE, "ENFILE", "Too many open files in system"},
	{ENOTDIR, "ENOTDIR", "Not a directory"},
	{ENAMETOOLONG, "ENAMETOOLONG", "File name too long"},
	{EPROTO, "EPROTO", "Protocol error"},
	{ENOTSOCK, "ENOTSOCK", "Socket operation on non-socket"},
	{EPROTOTYPE, "EPROTOTYPE", "Protocol wrong type for socket"},
	{EAFNOSUPPORT, "EAFNOSUPPORT", "Address family not supported by protocol"},
	{EADDRINUSE, "EADDRINUSE", "Address already in use"},
	{EADDRNOTAVAIL, "EADDRNOTAVAIL", "Cannot assign requested address"},
	{ENETDOWN, "ENETDOWN", "Network is down"},
	{ENETUNREACH, "ENETUNREACH", "Network is unreachable"},
	{ECONNABORTED, "ECONNABORTED", "Software caused connection abort"},
	{ECONNRESET, "ECONNRESET", "Connection reset by peer"},
	{ENOBUFS, "ENOBUFS", "No buffer space available"},
	{EISCONN, "EISCONN", "Transport endpoint is already connected"},
	{ETIMEDOUT, "ETIMEDOUT", "Connection timed out"},
	{ECONNREFUSED, "ECONNREFUSED", "Connection refused"},
	{EHOSTDOWN, "EHOSTDOWN", "Host is down"},
	{EHOSTUNREACH, "EHOSTUNREACH", "No route to host"},
	{EALREADY, "EALREADY", "Operation already in progress"},
	{EINPROGRESS, "EINPROGRESS", "Operation now in progress"},
};

const char *tp_errname(int err)
{
	size_t i;

	for (i = 0; i < sizeof(errs) / sizeof(errs[0]); i++)
		if (errs[i].err == err)
			return errs[i].name;
	return NULL;
}

void log_errno(struct tp_log *l, int err)
{
	size_t i;

	for (i = 0; i < sizeof(errs) / sizeof(errs[0]); i++)
		if (errs[i].err == err) {
			log_str(l, errs[i].text);
			return;
		}
	log_str(l, "error ");
	log_num(l, err);
}

void log_flush(struct tp_log *l)
{
	int e = errno;
	size_t off = 0;

	l->buf[l->n++] = '\n';
	while (off < l->n) {
		ssize_t w = write(2, l->buf + off, l->n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		off += (size_t)w;
	}
	l->n = 0;
	errno = e;
}

/* One line per process: the pid that printed it is remembered, so a fork
 * child (a new process) may say it once too. */
void tp_warn_channel_down(const char *path, int err)
{
	static int printed_pid;
	int pid = getpid(), old = __atomic_load_n(&printed_pid, __ATOMIC_ACQUIRE);
	struct tp_log l;

	if (old == pid ||
	    !__atomic_compare_exchange_n(&printed_pid, &old, pid, 0, __ATOMIC_ACQ_REL,
					 __ATOMIC_ACQUIRE))
		return;
	log_init(&l);
	log_str(&l, "tailproxy: cannot reach the tailproxy proxy at ");
	log_str(&l, path);
	log_str(&l, " (");
	log_errno(&l, err);
	log_str(&l, "); connections cannot be made");
	log_flush(&l);
}
