/* The seccomp filter: only the calls we may need to act on are trapped; everything else runs at
 * the kernel's full speed (the verdict for any other call does not depend on its arguments, so
 * the kernel caches it and runs no BPF for it). connect(); sendto() with a destination address
 * (a send() on a connected socket passes NULL and is not trapped); sendmsg()/sendmmsg(), whose
 * address lies in memory the filter cannot read; recvfrom() with a source address, recvmsg()
 * and recvmmsg(), for datagrams from the DNS responder or a UDP endpoint of the node
 * (udprecv.c); getpeername(), so a relayed socket shows the address the program asked for;
 * getsockopt(SOL_SOCKET, SO_ERROR), for the real errno of a handed-over connect; with exports,
 * bind() and listen(). Calls of other ABIs (i386, x32) pass. */
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

/* jump targets, resolved once the program is laid out: the next instruction, or the two
 * verdicts that end the program */
enum { NEXT = 0, ALLOW = -1, NOTIFY = -2 };

struct prog {
	struct sock_filter f[40];
	int jt[40], jf[40], n;
};

static void stmt(struct prog *p, uint16_t code, uint32_t k)
{
	p->f[p->n] = (struct sock_filter)BPF_STMT(code, k);
	p->jt[p->n] = p->jf[p->n] = NEXT;
	p->n++;
}

static void jeq(struct prog *p, uint32_t k, int jt, int jf)
{
	p->f[p->n] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, k, 0, 0);
	p->jt[p->n] = jt;
	p->jf[p->n] = jf;
	p->n++;
}

static void finish(struct prog *p)
{
	int allow = p->n, notify = p->n + 1, i;

	stmt(p, BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	stmt(p, BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF);
	for (i = 0; i < allow; i++) {
		if (BPF_CLASS(p->f[i].code) != BPF_JMP)
			continue;
		p->f[i].jt = (uint8_t)(p->jt[i] == ALLOW ? allow - i - 1 :
				       p->jt[i] == NOTIFY ? notify - i - 1 : 0);
		p->f[i].jf = (uint8_t)(p->jf[i] == ALLOW ? allow - i - 1 :
				       p->jf[i] == NOTIFY ? notify - i - 1 : 0);
	}
}

int install_filter(int exports)
{
	struct prog p = {.n = 0};
	struct sock_fprog fprog;
	int fd, sendto_at, recvfrom_at, getsockopt_at;

	stmt(&p, BPF_LD | BPF_W | BPF_ABS, ARCH);
	jeq(&p, AUDIT_ARCH_X86_64, NEXT, ALLOW);
	stmt(&p, BPF_LD | BPF_W | BPF_ABS, NR);
	jeq(&p, __NR_connect, NOTIFY, NEXT);
	jeq(&p, __NR_getpeername, NOTIFY, NEXT);
	jeq(&p, __NR_sendmsg, NOTIFY, NEXT);
	jeq(&p, __NR_sendmmsg, NOTIFY, NEXT);
	jeq(&p, __NR_recvmsg, NOTIFY, NEXT);
	jeq(&p, __NR_recvmmsg, NOTIFY, NEXT);
	if (exports) {
		jeq(&p, __NR_bind, NOTIFY, NEXT);
		jeq(&p, __NR_listen, NOTIFY, NEXT);
	}
	/* sendto: only with a destination address (args[4] != NULL) */
	sendto_at = p.n;
	jeq(&p, __NR_sendto, NEXT, NEXT);       /* jf patched below: to the recvfrom test */
	stmt(&p, BPF_LD | BPF_W | BPF_ABS, ARG_LO(4));
	jeq(&p, 0, NEXT, NOTIFY);
	stmt(&p, BPF_LD | BPF_W | BPF_ABS, ARG_HI(4));
	jeq(&p, 0, ALLOW, NOTIFY);
	/* recvfrom: only with a source address wanted (args[4] != NULL; recv() and read() of a
	 * connected socket pass NULL); the accumulator still holds nr when sendto's test sends
	 * us here */
	recvfrom_at = p.n;
	jeq(&p, __NR_recvfrom, NEXT, NEXT);     /* jf patched below: to the getsockopt test */
	stmt(&p, BPF_LD | BPF_W | BPF_ABS, ARG_LO(4));
	jeq(&p, 0, NEXT, NOTIFY);
	stmt(&p, BPF_LD | BPF_W | BPF_ABS, ARG_HI(4));
	jeq(&p, 0, ALLOW, NOTIFY);
	/* getsockopt: only SOL_SOCKET/SO_ERROR (int arguments: the low words); the accumulator
	 * still holds nr when recvfrom's test sends us here */
	getsockopt_at = p.n;
	jeq(&p, __NR_getsockopt, NEXT, ALLOW);
	stmt(&p, BPF_LD | BPF_W | BPF_ABS, ARG_LO(1));
	jeq(&p, SOL_SOCKET, NEXT, ALLOW);
	stmt(&p, BPF_LD | BPF_W | BPF_ABS, ARG_LO(2));
	jeq(&p, SO_ERROR, NOTIFY, ALLOW);
	finish(&p);
	p.f[sendto_at].jf = (uint8_t)(recvfrom_at - sendto_at - 1);
	p.f[recvfrom_at].jf = (uint8_t)(getsockopt_at - recvfrom_at - 1);

	fprog.len = (unsigned short)p.n;
	fprog.filter = p.f;
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
