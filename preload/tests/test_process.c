/* Processes and threads.
 *   test_process fork IP          parent and fork child both connect through the proxy
 *   test_process exec IP          a fork child execs a grandchild that connects
 *   test_process threads IP N     N threads connect at once (blocking and non-blocking)
 *   test_process closerange IP    close_range(3, ~0) first, then connect; no fd left behind
 *   test_process sighandler IP    connects from a signal handler while the main
 *                                 thread connects too (async-signal-safety)
 */
#include "tptest.h"

#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>

#ifndef SYS_close_range
#define SYS_close_range 436
#endif

static int lfd, lport;
static const char *dst;

/* connect, one ping-pong with the listener side, check the peer name */
static void one(int nonblock)
{
	struct sockaddr_storage ss;
	socklen_t len = mkaddr(dst, lport, &ss);
	int fd = socket(family_of(dst), SOCK_STREAM | (nonblock ? SOCK_NONBLOCK : 0), 0);
	char buf[8];

	CHECK(fd >= 0, "socket: %s", strerror(errno));
	if (nonblock) {
		int r = connect(fd, (struct sockaddr *)&ss, len);
		CHECK(r == -1 && errno == EINPROGRESS, "nb connect: %d %s", r, strerror(errno));
		CHECK(wait_writable(fd, 20000) & POLLOUT, "not writable");
		CHECK(so_error(fd) == 0, "SO_ERROR");
		set_nonblock(fd, 0);
	} else {
		CHECK(connect(fd, (struct sockaddr *)&ss, len) == 0, "connect: %s", strerror(errno));
	}
	CHECK(raw_peer_is_loopback(fd), "not relayed");
	expect_peer(fd, dst, lport);
	/* the echo server (a thread or the parent) answers each byte */
	write_all(fd, "x", 1);
	read_all(fd, buf, 1);
	CHECK(buf[0] == 'X', "echo got %c", buf[0]);
	close(fd);
}

/* upper-cases one byte, then closes */
static void *echo_one(void *arg)
{
	int c = (int)(long)arg;
	char b;

	if (read(c, &b, 1) == 1) {
		b = (char)(b - 'x' + 'X');
		write_all(c, &b, 1);
	}
	close(c);
	return NULL;
}

/* accepts forever, one thread per connection (a connect made from a signal
 * handler may wait on its echo while the main thread's is still unsent) */
static void *echo_server(void *arg)
{
	int fd = (int)(long)arg;
	sigset_t ss;
	pthread_attr_t a;

	/* signals are for the connecting thread (the sighandler test) */
	sigfillset(&ss);
	pthread_sigmask(SIG_BLOCK, &ss, NULL);
	pthread_attr_init(&a);
	pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&a, 64 * 1024);
	for (;;) {
		pthread_t t;
		int c = accept(fd, NULL, NULL);
		if (c < 0 && (errno == EBADF || errno == EINVAL || errno == ENOTSOCK))
			return NULL;    /* closed under us (close_range test) */
		if (c < 0)
			continue;
		if (pthread_create(&t, &a, echo_one, (void *)(long)c) != 0)
			echo_one((void *)(long)c);
	}
	return NULL;
}

static void start_server(void)
{
	pthread_t t;
	lfd = listener(dst, 1024, &lport);
	pthread_create(&t, NULL, echo_server, (void *)(long)lfd);
	pthread_detach(t);
}

static void wait_child(pid_t pid)
{
	int st;
	CHECK(waitpid(pid, &st, 0) == pid, "waitpid");
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child failed (status %#x)", st);
}

static void t_fork(void)
{
	pid_t pid;

	start_server();
	one(0);
	pid = fork();
	if (pid == 0) {
		one(0);
		one(1);
		_exit(0);
	}
	wait_child(pid);
	one(1);
	printf("ok: fork\n");
}

static void t_exec(char *self)
{
	char port[16];
	pid_t pid;

	start_server();
	snprintf(port, sizeof(port), "%d", lport);
	pid = fork();
	if (pid == 0) {
		execl(self, self, "exec-child", dst, port, (char *)NULL);
		_exit(127);
	}
	wait_child(pid);
	printf("ok: exec'd grandchild\n");
}

static void t_exec_child(int port)
{
	lport = port;
	one(0);
	one(1);
	printf("ok: in the exec'd child\n");
}

static void *worker(void *arg)
{
	one((int)(long)arg & 1);
	return NULL;
}

static void t_threads(int n)
{
	pthread_t *t = calloc((size_t)n, sizeof(*t));
	pthread_attr_t a;
	int i;

	start_server();
	pthread_attr_init(&a);
	pthread_attr_setstacksize(&a, 256 * 1024);
	for (i = 0; i < n; i++)
		CHECK(pthread_create(&t[i], &a, worker, (void *)(long)i) == 0, "pthread_create");
	for (i = 0; i < n; i++)
		pthread_join(t[i], NULL);
	free(t);
	printf("ok: %d threads\n", n);
}

static void t_nofds(void);

static void t_closerange(void)
{
	int i;

	/* a first connect, so anything the library might keep would exist now */
	start_server();
	one(0);
	for (i = 0; i < 5; i++)
		CHECK(socket(AF_INET, SOCK_DGRAM, 0) >= 0, "socket");
	/* the program closes every fd above 2 (the listener too; the echo
	 * thread then fails its accept and ends) */
	long r = syscall(SYS_close_range, 3u, ~0u, 0u);
	CHECK(r == 0, "close_range: %s", strerror(errno));
	CHECK(fcntl(3, F_GETFD) == -1 && errno == EBADF, "fd 3 still open");
	start_server();
	one(0);
	one(1);
	t_nofds();
	printf("ok: after close_range\n");
}

/* open fds below 1000 (valgrind keeps its own near the limit) */
static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.' && atoi(e->d_name) < 1000)
			n++;
	closedir(d);
	return n - 1;      /* the directory's own fd */
}

static void t_nofds(void)
{
	int before = count_fds(), i, after = -1;

	for (i = 0; i < 20; i++)
		one(i & 1);
	/* the echo threads close their ends a moment after answering */
	for (i = 0; i < 200 && (after = count_fds()) != before; i++)
		poll(NULL, 0, 10);
	CHECK(before == after, "%d fds before, %d after 20 connects", before, after);
	printf("ok: no fd left behind (%d)\n", after);
}

static volatile sig_atomic_t in_handler_ok, in_handler_fail;

/* A blocking connect, getpeername and SO_ERROR, all from a signal handler. */
static void on_alarm(int sig)
{
	struct sockaddr_storage ss, peer;
	socklen_t len = mkaddr(dst, lport, &ss), plen = sizeof(peer);
	int e = errno, fd = socket(family_of(dst), SOCK_STREAM, 0), v = -1;
	socklen_t vl = sizeof(v);
	char b = 'x';

	(void)sig;
	if (connect(fd, (struct sockaddr *)&ss, len) == 0 &&
	    getpeername(fd, (struct sockaddr *)&peer, &plen) == 0 && plen == len &&
	    memcmp(&peer, &ss, len) == 0 &&
	    getsockopt(fd, SOL_SOCKET, SO_ERROR, &v, &vl) == 0 && v == 0 &&
	    write(fd, &b, 1) == 1 && read(fd, &b, 1) == 1 && b == 'X')
		in_handler_ok++;
	else
		in_handler_fail++;
	close(fd);
	errno = e;
}

static void t_sighandler(void)
{
	struct sigaction sa;
	struct itimerval it = {.it_interval = {0, 15000}, .it_value = {0, 15000}};
	int i;

	start_server();
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGALRM, &sa, NULL);
	setitimer(ITIMER_REAL, &it, NULL);
	for (i = 0; i < 60 || in_handler_ok < 5; i++) {
		struct sockaddr_storage ss;
		socklen_t len = mkaddr(dst, lport, &ss);
		int fd = socket(family_of(dst), SOCK_STREAM | SOCK_NONBLOCK, 0), r;
		struct pollfd p = {.fd = fd, .events = POLLOUT};
		char b;

		CHECK(i < 2000, "handler never succeeded");
		r = connect(fd, (struct sockaddr *)&ss, len);
		CHECK(r == -1 && errno == EINPROGRESS, "connect: %s", strerror(errno));
		while ((r = poll(&p, 1, 10000)) < 0 && errno == EINTR)
			;
		CHECK(r == 1 && so_error(fd) == 0, "connect %d did not complete", i);
		set_nonblock(fd, 0);
		while (write(fd, "x", 1) != 1)
			CHECK(errno == EINTR, "write: %s", strerror(errno));
		while (read(fd, &b, 1) != 1)
			CHECK(errno == EINTR, "read: %s", strerror(errno));
		CHECK(b == 'X', "echo");
		close(fd);
	}
	memset(&it, 0, sizeof(it));
	setitimer(ITIMER_REAL, &it, NULL);
	CHECK(in_handler_fail == 0, "%d connects in the handler failed", (int)in_handler_fail);
	printf("ok: %d main connects, %d in the signal handler\n", i, (int)in_handler_ok);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	CHECK(argc >= 3, "usage");
	const char *m = argv[1];
	dst = argv[2];
	if (!strcmp(m, "fork"))
		t_fork();
	else if (!strcmp(m, "exec"))
		t_exec(argv[0]);
	else if (!strcmp(m, "exec-child"))
		t_exec_child(atoi(argv[3]));
	else if (!strcmp(m, "threads"))
		t_threads(argc > 3 ? atoi(argv[3]) : 200);
	else if (!strcmp(m, "sighandler"))
		t_sighandler();
	else if (!strcmp(m, "closerange"))
		t_closerange();
	else
		CHECK(0, "unknown mode %s", m);
	return 0;
}
