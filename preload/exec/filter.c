/* The seccomp filter: only the calls we may need to act on are trapped; everything else runs at
 * the kernel's full speed (one BPF pass). connect(); sendto() with a destination address (a
 * send() on a connected socket passes NULL and is not trapped); sendmsg()/sendmmsg(), whose
 * address lies in memory the filter cannot read; getpeername(), so a relayed socket shows the
 * address the program asked for; getsockopt(SOL_SOCKET, SO_ERROR), for the real errno of a
 * handed-over connect. Calls of other ABIs (i386, x32) pass. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "seccomp_exec.h"

#define NR offsetof(struct seccomp_data, nr)
#define ARCH offsetof(struct seccomp_data, arch)
#define ARG_LO(i) (offsetof(struct seccomp_data, args) + 8 * (i))
#define ARG_HI(i) (offsetof(struct seccomp_data, args) + 8 * (i) + 4)

int install_filter(void)
{
	struct sock_filter prog[] = {
		/* 0 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARCH),
		/* 1 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
		/* 2 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		/* 3 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, NR),
		/* 4 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_connect, 14, 0),
		/* 5 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_getpeername, 13, 0),
		/* 6 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_sendmsg, 12, 0),
		/* 7 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_sendmmsg, 11, 0),
		/* 8 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_sendto, 0, 4),
		/* sendto: only with a destination address (args[4] != NULL) */
		/* 9 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(4)),
		/* 10 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 8),
		/* 11 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_HI(4)),
		/* 12 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 5, 6),
		/* getsockopt: only SOL_SOCKET/SO_ERROR (int arguments: the low words) */
		/* 13 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_getsockopt, 0, 4),
		/* 14 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(1)),
		/* 15 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SOL_SOCKET, 0, 2),
		/* 16 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(2)),
		/* 17 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SO_ERROR, 1, 0),
		/* 18 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		/* 19 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
	};
	struct sock_fprog fprog = {.len = sizeof(prog) / sizeof(prog[0]), .filter = prog};

	int fd;

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		return -1;
	/* SPEC_ALLOW: this filter intercepts, it does not sandbox; on kernels whose default
	 * would turn on Speculative Store Bypass Disable for any filtered task, that slowdown
	 * buys the program nothing (older kernels lack the flag: then without it) */
	fd = (int)syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER,
			  SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_SPEC_ALLOW, &fprog);
	if (fd < 0 && errno == EINVAL)
		fd = (int)syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER,
				  SECCOMP_FILTER_FLAG_NEW_LISTENER, &fprog);
	return fd;
}
