/* exec of a program the preload cannot reach (TAILPROXY_EXEC names tailproxy-exec, set for
 * `--intercept auto`): a dynamic program that execs a static binary or a Go program (either
 * linkage: Go makes its own syscalls) gets it run under the seccomp front end instead, so the
 * child's connections are caught too. execve(), execv(), execvp() and execvpe() look at the
 * file's ELF headers (PT_INTERP, the Go build ID note); for such a file the exec becomes
 * `tailproxy-exec PATH ARGV...`, our LD_PRELOAD handed to it as TAILPROXY_EXEC_PRELOAD (it is
 * the program's again, cgo-linked Go needing it for its libc resolver). Not for setuid/setgid
 * files (no_new_privs would strip their privileges) nor when a seccomp filter is on us
 * already (we run under tailproxy-exec: the filter is inherited). No malloc (a vfork child
 * may call exec): the new argv and envp live on the stack. */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tailproxy.h"

typedef int (*execve_fn)(const char *, char *const[], char *const[]);

extern char **environ;

#define MAX_PHDRS 64

static const char *env_get(char *const envp[], const char *name)
{
	size_t n = strlen(name);
	int i;

	for (i = 0; envp && envp[i]; i++)
		if (!strncmp(envp[i], name, n) && envp[i][n] == '=')
			return envp[i] + n + 1;
	return NULL;
}

static int has_go_note(int fd, off_t off, size_t size)
{
	unsigned char buf[512];
	size_t pos = 0;
	ssize_t got;

	if (size > sizeof(buf))
		size = sizeof(buf);
	got = pread(fd, buf, size, off);
	while (got > 0 && pos + 12 <= (size_t)got) {
		Elf64_Nhdr nh;
		memcpy(&nh, buf + pos, sizeof(nh));
		/* Go's linker names it "Go\0\0" (namesz 4) */
		if (nh.n_type == 4 && (nh.n_namesz == 3 || nh.n_namesz == 4) &&
		    pos + 12 + 3 <= (size_t)got && !memcmp(buf + pos + 12, "Go", 3))
			return 1;
		pos += 12 + ((nh.n_namesz + 3) & ~3u) + ((nh.n_descsz + 3) & ~3u);
	}
	return 0;
}

/* 1: a 64-bit ELF executable without a program interpreter, or built by Go. */
static int out_of_reach(const char *path)
{
	Elf64_Ehdr eh;
	Elf64_Phdr ph[MAX_PHDRS];
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC), i, interp = 0, go = 0, n;

	if (fd < 0)
		return 0;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (st.st_mode & (S_ISUID | S_ISGID)) ||
	    pread(fd, &eh, sizeof(eh), 0) != sizeof(eh) || memcmp(eh.e_ident, ELFMAG, SELFMAG) ||
	    eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_phentsize != sizeof(Elf64_Phdr)) {
		real_close(fd);
		return 0;
	}
	n = eh.e_phnum < MAX_PHDRS ? eh.e_phnum : MAX_PHDRS;
	if (pread(fd, ph, (size_t)n * sizeof(ph[0]), (off_t)eh.e_phoff) != (ssize_t)(n * sizeof(ph[0])))
		n = 0;
	for (i = 0; i < n; i++) {
		if (ph[i].p_type == PT_INTERP)
			interp = 1;
		else if (ph[i].p_type == PT_NOTE && !go)
			go = has_go_note(fd, (off_t)ph[i].p_offset, ph[i].p_filesz);
	}
	real_close(fd);
	return n > 0 && (!interp || go);
}

/* Already under a seccomp filter (Seccomp: 2 in /proc/self/status)? */
static int filtered(void)
{
	char buf[2048], *p;
	int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	real_close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	p = strstr(buf, "\nSeccomp:");
	return p && strtol(p + 9, NULL, 10) == 2;
}

static int do_execve(const char *path, char *const argv[], char *const envp[])
{
	execve_fn real = TP_REAL(execve_fn, execve);
	const char *helper = env_get(envp, "TAILPROXY_EXEC");
	int argc = 0, envc = 0, i, j;

	if (!real) {
		errno = ENOSYS;
		return -1;
	}
	if (!helper || !*helper || !path || !argv || !argv[0] || !out_of_reach(path) || filtered())
		return real(path, argv, envp);
	while (argv[argc])
		argc++;
	while (envp && envp[envc])
		envc++;
	{
		const char *pre = env_get(envp, "LD_PRELOAD");
		char moved[pre ? strlen(pre) + sizeof("TAILPROXY_EXEC_PRELOAD=") : 1];
		char *nargv[argc + 3], *nenvp[envc + 2];

		nargv[0] = (char *)helper;
		nargv[1] = (char *)path;
		for (i = 0; i <= argc; i++)
			nargv[i + 2] = argv[i];
		for (i = j = 0; i < envc; i++)
			if (strncmp(envp[i], "LD_PRELOAD=", 11) &&
			    strncmp(envp[i], "TAILPROXY_EXEC_PRELOAD=", 23))
				nenvp[j++] = envp[i];
		if (pre) {
			memcpy(moved, "TAILPROXY_EXEC_PRELOAD=", 23);
			strcpy(moved + 23, pre);
			nenvp[j++] = moved;
		}
		nenvp[j] = NULL;
		real(helper, nargv, nenvp);
		return -1;      /* the helper could not be run: errno says why */
	}
}

EXPORT int execve(const char *path, char *const argv[], char *const envp[])
{
	return do_execve(path, argv, envp);
}

EXPORT int execv(const char *path, char *const argv[])
{
	return do_execve(path, argv, environ);
}

/* execvp(e): the PATH search of POSIX (a name with a slash is taken as it is); ENOEXEC
 * scripts are left to the real execvpe, which runs them with /bin/sh. */
EXPORT int execvpe(const char *file, char *const argv[], char *const envp[])
{
	typedef int (*execvpe_fn)(const char *, char *const[], char *const[]);
	execvpe_fn real = TP_REAL(execvpe_fn, execvpe);
	const char *p, *path;
	size_t flen;

	if (!real) {
		errno = ENOSYS;
		return -1;
	}
	if (strchr(file, '/'))
		return do_execve(file, argv, envp);
	if (!*file || !env_get(envp, "TAILPROXY_EXEC"))
		return real(file, argv, envp);
	path = getenv("PATH");
	if (!path)
		path = "/bin:/usr/bin";
	flen = strlen(file);
	for (p = path;; p++) {
		const char *end = strchrnul(p, ':');
		size_t dlen = (size_t)(end - p);
		char full[dlen + flen + 3];

		memcpy(full, dlen ? p : ".", dlen ? dlen : 1);
		dlen = dlen ? dlen : 1;
		full[dlen] = '/';
		memcpy(full + dlen + 1, file, flen + 1);
		if (access(full, X_OK) == 0) {  /* the one the search finds */
			if (out_of_reach(full))
				return do_execve(full, argv, envp);
			break;
		}
		if (!*end)
			break;
		p = end;
	}
	return real(file, argv, envp);
}

EXPORT int execvp(const char *file, char *const argv[])
{
	return execvpe(file, argv, environ);
}
