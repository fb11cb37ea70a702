/* Tells the agent that this process image runs under tailproxy, so the agent stays up while
 * any such process lives (src/tailproxy/agent/lifetime.py). One datagram to the socket named by
 * TAILPROXY_REGISTER when the library loads (each exec) and in every fork child. The agent's
 * socket has SO_PASSCRED, so the kernel attaches this process's real pid and uid
 * (SCM_CREDENTIALS) and the datagram itself carries nothing to trust. No thread, no fd kept,
 * errno preserved; raw syscalls, since sendto and close are hooks of this library. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "tailproxy.h"

static struct sockaddr_un register_addr;
static socklen_t register_len;	/* 0: no agent to tell */

static void register_process(void)
{
	static const char msg[] = "tailproxy-register";
	int saved = errno;
	long fd;

	if (!register_len)
		return;
	fd = syscall(SYS_socket, AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd >= 0) {
		/* MSG_DONTWAIT: a full agent queue must never block the program. */
		syscall(SYS_sendto, fd, msg, sizeof msg - 1, MSG_DONTWAIT | MSG_NOSIGNAL,
			&register_addr, register_len);
		syscall(SYS_close, fd);
	}
	errno = saved;
}

__attribute__((constructor)) static void register_init(void)
{
	int saved = errno;
	const char *path = getenv("TAILPROXY_REGISTER");
	size_t n = path ? strlen(path) : 0;

	if (n > 0 && n < sizeof register_addr.sun_path) {
		register_addr.sun_family = AF_UNIX;
		memcpy(register_addr.sun_path, path, n + 1);
		register_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
		/* The child handler runs in the child of every fork(), before fork returns there. */
		pthread_atfork(NULL, NULL, register_process);
		register_process();
	}
	errno = saved;
}
