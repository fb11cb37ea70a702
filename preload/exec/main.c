/* tailproxy-exec PATH ARGV0 [ARG...]: run PATH under the seccomp filter, supervising it.
 * tailproxy-exec --probe: exit 0 if seccomp user notification and pidfd_getfd work here, else
 * print why and exit 1 (the launcher then falls back to proxy variables).
 *
 * We fork: the child installs the filter and execs the program; we stay its parent, so the
 * kernel lets us read its memory and take its descriptors (ptrace access, which Yama's
 * ptrace_scope=1 grants only to ancestors). The child cannot send us the listener with
 * sendmsg() (trapped by then, with nobody yet to answer): it writes the fd number on a pipe
 * and we take the fd with pidfd_getfd. Signals sent to us go on to the program (a terminal's
 * Ctrl-C reached it already); its exit status becomes ours. TAILPROXY_EXEC_PRELOAD, if set,
 * is the program's LD_PRELOAD (kept out of this process). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "seccomp_exec.h"

static const int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH};
static struct seccomp_notif_sizes sizes;

size_t notif_size(void)
{
	return sizes.seccomp_notif > sizeof(struct seccomp_notif) ? sizes.seccomp_notif
								  : sizeof(struct seccomp_notif);
}

static void say(const char *a, const char *b)
{
	fprintf(stderr, "tailproxy: %s%s\n", a, b ? b : "");
}

static int take_fd(pid_t pid, int fd)
{
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0), ours;

	if (pidfd < 0)
		return -1;
	ours = (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
	close(pidfd);
	return ours;
}

/* Linux 6.6: a trapped call wakes a waiting worker on the caller's CPU, which then sleeps in
 * the call: a round trip costs a fraction of a scheduler migration (older kernels: EINVAL,
 * and the usual wake-up). */
#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (1UL << 0)
#endif

static void sync_wake_up(int listener)
{
	if (ioctl(listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP) != 0)
		errno = 0;
}

/* The filter in a throw-away child, and its listener taken from it. */
static int probe(void)
{
	int up[2], down[2], lfd = -1, ours, err = 0, status;
	char ack = 0;
	pid_t pid;

	if (pipe2(up, O_CLOEXEC) != 0 || pipe2(down, O_CLOEXEC) != 0)
		return errno;
	pid = fork();
	if (pid < 0)
		return errno;
	if (pid == 0) {
		lfd = install_filter(1);
		if (lfd < 0)
			lfd = -errno;
		if (write(up[1], &lfd, sizeof(lfd)) != sizeof(lfd) || read(down[0], &ack, 1) < 0)
			_exit(1);
		_exit(0);
	}
	if (read(up[0], &lfd, sizeof(lfd)) != sizeof(lfd))
		err = EIO;
	else if (lfd < 0)
		err = -lfd;
	else if ((ours = take_fd(pid, lfd)) < 0)
		err = errno;
	else
		close(ours);
	if (write(down[1], &ack, 1) < 0 && !err)
		err = errno;
	waitpid(pid, &status, 0);
	return err;
}

/* The workers answering the program's calls. Several wait in SECCOMP_IOCTL_NOTIF_RECV at
 * once (each call goes to one of them); a blocking connect keeps its worker until the dial
 * has an outcome, so whenever the last idle worker takes a call another one starts, and
 * workers beyond BASE_WORKERS end once enough are idle again. */
#define BASE_WORKERS 2
#define MAX_WORKERS 1024

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static int idle_workers, all_workers;
static int listener_fd = -1;

static int start_worker(void);

static void *worker(void *arg)
{
	size_t reqsz = notif_size();
	struct seccomp_notif *req = malloc(reqsz);

	(void)arg;
	for (;;) {
		int more, leave;

		pthread_mutex_lock(&pool_lock);
		idle_workers++;
		pthread_mutex_unlock(&pool_lock);
		if (req)
			memset(req, 0, reqsz);
		if (!req || ioctl(listener_fd, SECCOMP_IOCTL_NOTIF_RECV, req) != 0) {
			if (req && (errno == EINTR || errno == ENOENT)) {   /* ENOENT: the task went */
				pthread_mutex_lock(&pool_lock);
				idle_workers--;
				pthread_mutex_unlock(&pool_lock);
				continue;
			}
			break;          /* the listener is gone: no task left under the filter */
		}
		pthread_mutex_lock(&pool_lock);
		idle_workers--;
		more = idle_workers == 0 && all_workers < MAX_WORKERS;
		if (more)
			all_workers++;
		pthread_mutex_unlock(&pool_lock);
		if (more && start_worker() != 0) {
			pthread_mutex_lock(&pool_lock);
			all_workers--;
			pthread_mutex_unlock(&pool_lock);
		}
		handle_call(listener_fd, req);
		pthread_mutex_lock(&pool_lock);
		leave = idle_workers >= BASE_WORKERS && all_workers > BASE_WORKERS;
		if (leave)
			all_workers--;
		pthread_mutex_unlock(&pool_lock);
		if (leave) {
			free(req);
			return NULL;
		}
	}
	pthread_mutex_lock(&pool_lock);
	idle_workers--;
	all_workers--;
	pthread_mutex_unlock(&pool_lock);
	free(req);
	return NULL;
}

static int start_worker(void)
{
	pthread_attr_t attr;
	pthread_t t;
	int r;

	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, 256 * 1024);
	r = pthread_create(&t, &attr, worker, NULL);
	pthread_attr_destroy(&attr);
	return r;
}

static int start_workers(int listener)
{
	int i;

	listener_fd = listener;
	pthread_mutex_lock(&pool_lock);
	all_workers = BASE_WORKERS;
	pthread_mutex_unlock(&pool_lock);
	for (i = 0; i < BASE_WORKERS; i++)
		if (start_worker() != 0)
			break;
	pthread_mutex_lock(&pool_lock);
	all_workers = i;
	pthread_mutex_unlock(&pool_lock);
	return i > 0 ? 0 : -1;      /* one worker is enough to go on */
}

static void exit_like(int status)
{
	int sig;

	if (WIFEXITED(status))
		exit(WEXITSTATUS(status));
	sig = WTERMSIG(status);
	{       /* die of the same signal, without a core of our own */
		struct rlimit none = {0, 0};
		sigset_t s;

		setrlimit(RLIMIT_CORE, &none);
		signal(sig, SIG_DFL);
		sigemptyset(&s);
		sigaddset(&s, sig);
		sigprocmask(SIG_UNBLOCK, &s, NULL);
		raise(sig);
	}
	exit(128 + sig);
}

static int in_terminal_foreground(void)
{
	pid_t fg = tcgetpgrp(STDIN_FILENO);

	return fg >= 0 && fg == getpgrp();
}

static void child(const char *path, char **argv, sigset_t *old, int to_parent, int from_parent)
{
	const char *preload = getenv("TAILPROXY_EXEC_PRELOAD");
	int lfd, e;
	char ack;

	sigprocmask(SIG_SETMASK, old, NULL);
	if (preload && *preload) {
		const char *prev = getenv("LD_PRELOAD");
		char *v = NULL;
		if (prev && *prev && asprintf(&v, "%s:%s", prev, preload) > 0)
			setenv("LD_PRELOAD", v, 1);
		else
			setenv("LD_PRELOAD", preload, 1);
		free(v);
	}
	unsetenv("TAILPROXY_EXEC_PRELOAD");
	lfd = install_filter(export_mode());
	if (lfd < 0)
		lfd = -errno;
	/* from here on, only calls the filter lets through until the parent has the listener */
	if (write(to_parent, &lfd, sizeof(lfd)) != sizeof(lfd) || read(from_parent, &ack, 1) != 1)
		_exit(127);
	if (lfd >= 0)
		close(lfd);
	execv(path, argv);
	e = errno;
	fprintf(stderr, "tailproxy: %s: %s\n", argv[0],
		e == ENOENT ? "command not found" : strerror(e));
	_exit(e == ENOENT ? 127 : 126);
}

int main(int argc, char **argv)
{
	int up[2], down[2], lfd = 0, listener = -1, status, i, err;
	sigset_t set, old;
	pid_t pid;
	char ack = 1;

	if (syscall(__NR_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes) != 0)
		memset(&sizes, 0, sizeof(sizes));
	if (argc == 2 && strcmp(argv[1], "--probe") == 0) {
		err = sizes.seccomp_notif ? probe() : errno;
		if (err) {
			fprintf(stderr, "%s\n", strerror(err));
			return 1;
		}
		return 0;
	}
	if (argc < 3) {
		fprintf(stderr, "usage: tailproxy-exec PATH ARGV0 [ARG...] | --probe\n");
		return 2;
	}
	sigemptyset(&set);
	for (i = 0; i < (int)(sizeof(forwarded) / sizeof(forwarded[0])); i++)
		sigaddset(&set, forwarded[i]);
	sigaddset(&set, SIGCHLD);
	sigprocmask(SIG_BLOCK, &set, &old);
	if (pipe2(up, O_CLOEXEC) != 0 || pipe2(down, O_CLOEXEC) != 0) {
		perror("tailproxy: pipe");
		return 126;
	}
	pid = fork();
	if (pid < 0) {
		perror("tailproxy: fork");
		return 126;
	}
	if (pid == 0)
		child(argv[1], argv + 2, &old, up[1], down[0]);
	close(up[1]);
	close(down[0]);
	if (read(up[0], &lfd, sizeof(lfd)) == sizeof(lfd)) {
		if (lfd >= 0 && (listener = take_fd(pid, lfd)) >= 0)
			sync_wake_up(listener);
		if (lfd >= 0 && listener < 0)
			say("cannot take the seccomp listener: ", strerror(errno));
		else if (lfd < 0)
			say("seccomp user notification unavailable: ", strerror(-lfd));
		if (listener >= 0 && start_workers(listener) != 0) {
			say("cannot start the seccomp supervisor", NULL);
			close(listener);
			listener = -1;
		}
	}
	/* With no supervisor, the program's trapped calls would fail (ENOSYS) rather than
	 * hang: it runs, unintercepted, as the line above said. */
	if (write(down[1], &ack, 1) != 1)
		say("cannot start the program", NULL);
	close(down[1]);
	close(up[0]);
	for (;;) {
		siginfo_t si;
		int sig = sigwaitinfo(&set, &si);

		if (sig == SIGCHLD) {
			pid_t w = waitpid(pid, &status, WNOHANG);
			if (w == pid)
				exit_like(status);
			continue;
		}
		if (sig < 0)
			continue;
		if ((sig == SIGINT || sig == SIGQUIT) && in_terminal_foreground())
			continue;       /* the terminal sent it to the program's group already */
		kill(pid, sig);
	}
}
