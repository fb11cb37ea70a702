/* The trapped task: its memory (process_vm_readv), its descriptors (pidfd_getfd) and the answer
 * to its call. A call's id stays valid only while the task waits in it, so whatever we read is
 * believed only after SECCOMP_IOCTL_NOTIF_ID_VALID says the call is still the same. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "seccomp_exec.h"

#ifndef __NR_pidfd_open
#define __NR_pidfd_open 434
#endif
#define PIDFD_THREAD_FLAG O_EXCL     /* PIDFD_THREAD */
#ifndef __NR_pidfd_getfd
#define __NR_pidfd_getfd 438
#endif

int target_read(const struct call *c, uint64_t addr, void *buf, size_t len)
{
	struct iovec local = {.iov_base = buf, .iov_len = len};
	struct iovec remote = {.iov_base = (void *)(uintptr_t)addr, .iov_len = len};

	if (len == 0)
		return 0;
	return process_vm_readv((pid_t)c->req->pid, &local, 1, &remote, 1, 0) == (ssize_t)len
		       ? 0 : -1;
}

int target_write(const struct call *c, uint64_t addr, const void *buf, size_t len)
{
	struct iovec local = {.iov_base = (void *)buf, .iov_len = len};
	struct iovec remote = {.iov_base = (void *)(uintptr_t)addr, .iov_len = len};

	if (len == 0)
		return 0;
	return process_vm_writev((pid_t)c->req->pid, &local, 1, &remote, 1, 0) == (ssize_t)len
		       ? 0 : -1;
}

int call_valid(const struct call *c)
{
	uint64_t id = c->req->id;

	return ioctl(c->listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0;
}

/* The thread group leader of task tid (from /proc), or -1. */
static pid_t tgid_of(pid_t tid)
{
	char path[64], buf[512], *p;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)tid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	p = strstr(buf, "\nTgid:");
	return p ? (pid_t)strtol(p + 6, NULL, 10) : -1;
}

/* A pidfd for the trapped task, which is often not its process's main thread (Go connects
 * on any thread): PIDFD_THREAD (Linux 6.9), else the thread group leader's. */
static int task_pidfd(pid_t tid)
{
	int pidfd = (int)syscall(__NR_pidfd_open, tid, PIDFD_THREAD_FLAG);
	pid_t tgid;

	if (pidfd >= 0 || errno != EINVAL)
		return pidfd;
	pidfd = (int)syscall(__NR_pidfd_open, tid, 0);
	if (pidfd >= 0 || errno != EINVAL || (tgid = tgid_of(tid)) <= 0)
		return pidfd;
	return (int)syscall(__NR_pidfd_open, tgid, 0);
}

int target_fd(const struct call *c, int fd)
{
	int pidfd = task_pidfd((pid_t)c->req->pid), ours = -1;

	if (pidfd < 0)
		return -1;
	/* the pid may have been reused since the call was made: only a still-waiting call
	 * proves the pidfd names its task */
	if (call_valid(c))
		ours = (int)syscall(__NR_pidfd_getfd, pidfd, fd, 0);
	close(pidfd);
	return ours;
}

static void send_resp(const struct call *c, int64_t val, int err, uint32_t flags)
{
	struct seccomp_notif_resp resp;

	memset(&resp, 0, sizeof(resp));
	resp.id = c->req->id;
	resp.val = err ? 0 : val;
	resp.error = err ? -err : 0;
	resp.flags = flags;
	/* ENOENT: the call is gone (the task was interrupted or died); nothing to do */
	while (ioctl(c->listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) != 0 && errno == EINTR)
		;
}

void answer(const struct call *c, int64_t val, int err)
{
	send_resp(c, val, err, 0);
}

void answer_continue(const struct call *c)
{
	send_resp(c, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE);
}
