/*
 * crucible-init: PID 1 of every sandbox.
 *
 * Why an init at all: the kernel drops signals that a pid namespace's init sends
 * itself unless it installed a handler, so a program running as PID 1 cannot
 * raise(SIGSEGV) or be killed by its own kill(0, ...); nor would anything reap
 * its orphans. This init forks the program, reaps every process of the
 * namespace, and when the program ends reports *exactly* how (exit code or
 * signal; an exit status of 137 and SIGKILL are different things) as a trailer on
 * stderr framed by a per-run nonce the program cannot read:
 *
 *     \x1e crucible-status:<nonce>:exit:<code>:<wall_us>\n
 *     \x1e crucible-status:<nonce>:signal:<number>:<wall_us>\n
 *
 * wall_us is the program's own run time, fork to exit, measured here on
 * CLOCK_MONOTONIC, so it excludes the runtime's start-up and tear-down.
 *
 * The nonce comes in CRUCIBLE_STATUS_NONCE; it is removed from the environment
 * before exec and the init makes itself non-dumpable first, so a program running
 * as the same uid cannot read it from /proc/1/environ. When this process exits
 * the kernel SIGKILLs everything left in the namespace, so daemonised children
 * die with the run.
 *
 * The program's seccomp filter is installed here, in the child just before execve:
 * a BPF program compiled once by the supervisor from seccomp.json (seccomp.py) and
 * bound read-only at SECCOMP_PATH. Without it, nothing runs (fail closed).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SECCOMP_PATH "/.crucible/seccomp.bpf"
#define MAX_FILTER 4096 /* BPF_MAXINSNS */

static struct sock_filter filter[MAX_FILTER];

/* Reads the compiled filter; returns the number of instructions, or -1. */
static int read_filter(void) {
    int fd = open(SECCOMP_PATH, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    size_t got = 0;
    for (;;) {
        ssize_t n = read(fd, (char *)filter + got, sizeof filter - got);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        got += (size_t)n;
    }
    close(fd);
    if (got == 0 || got % sizeof(struct sock_filter) != 0) {
        return -1;
    }
    return (int)(got / sizeof(struct sock_filter));
}

int main(int argc, char **argv) {
    char nonce[128] = "";
    const char *env_nonce = getenv("CRUCIBLE_STATUS_NONCE");

    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    if (env_nonce != NULL) {
        strncpy(nonce, env_nonce, sizeof(nonce) - 1);
        /* /proc/1/environ shows the original environment block, whatever unsetenv
         * does, and gVisor serves it regardless of dumpable: scrub it in place. */
        memset((char *)env_nonce, 'x', strlen(env_nonce));
    }
    unsetenv("CRUCIBLE_STATUS_NONCE");
    if (argc < 2) {
        fprintf(stderr, "usage: crucible-init PROGRAM [ARGS...]\n");
        return 125;
    }

    int instructions = read_filter();
    if (instructions < 0) {
        fprintf(stderr, "crucible-init: no seccomp filter at %s; refusing to run\n", SECCOMP_PATH);
        return 125;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t child = fork();
    if (child < 0) {
        perror("crucible-init: fork");
        return 125;
    }
    if (child == 0) {
        struct sock_fprog prog = {.len = (unsigned short)instructions, .filter = filter};
        /* no_new_privs is already set by the runtime (noNewPrivileges), as required. */
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0) {
            fprintf(stderr, "crucible-init: cannot install seccomp filter: %s\n", strerror(errno));
            _exit(126);
        }
        execvp(argv[1], argv + 1);
        fprintf(stderr, "crucible-init: cannot execute %s: %s\n", argv[1], strerror(errno));
        _exit(127);
    }

    int status = 0;
    for (;;) {
        int st;
        pid_t pid = wait(&st);
        if (pid == child) {
            status = st;
            break;
        }
        if (pid < 0 && errno != EINTR) {
            break;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long long wall_us = (long long)(t1.tv_sec - t0.tv_sec) * 1000000LL +
                        (t1.tv_nsec - t0.tv_nsec) / 1000;
    char trailer[256];
    int n;
    if (WIFSIGNALED(status)) {
        n = snprintf(trailer, sizeof trailer, "\x1e" "crucible-status:%s:signal:%d:%lld\n", nonce,
                     WTERMSIG(status), wall_us);
    } else {
        n = snprintf(trailer, sizeof trailer, "\x1e" "crucible-status:%s:exit:%d:%lld\n", nonce,
                     WEXITSTATUS(status), wall_us);
    }
    /* One write below PIPE_BUF is atomic: the trailer never interleaves. */
    ssize_t ignored = write(STDERR_FILENO, trailer, (size_t)n);
    (void)ignored;
    /* Also exit with the shell's encoding (code, or 128+signal), so a bundle run by
     * hand with `runc run` reports something sensible; Crucible reads the trailer. */
    if (WIFSIGNALED(status)) {
        return 128 + WTERMSIG(status);
    }
    return WEXITSTATUS(status);
}
