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
 * Job mode (no arguments): the container is created ahead of the request with the init
 * waiting, and the supervisor releases it by writing the job on stdin:
 *
 *     CRUCIBLE-JOB <length>\n <length bytes of NUL-terminated fields>
 *
 * fields: argc, argv..., envc, env..., RLIMIT_FSIZE, RLIMIT_NPROC (decimal; 0 leaves
 * the limit as the runtime set it). The rest of stdin is the program's own stdin.
 * The job is read before any untrusted code runs, so it is trusted input, but it is
 * still parsed with bounds. EOF before a job means the warm sandbox was discarded.
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
#include <sys/resource.h>
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

#define MAX_JOB (4 << 20)

/* Reads exactly n bytes from stdin; 0 on success, -1 on EOF or error. */
static int read_exact(char *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(STDIN_FILENO, buf + got, n - got);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            return -1;
        }
        got += (size_t)r;
    }
    return 0;
}

/* The next NUL-terminated field of the job at *pos, or NULL past its end. */
static char *next_field(char *job, size_t len, size_t *pos) {
    if (*pos >= len) {
        return NULL;
    }
    char *field = job + *pos;
    char *end = memchr(field, '\0', len - *pos);
    if (end == NULL) {
        return NULL;
    }
    *pos = (size_t)(end - job) + 1;
    return field;
}

static int parse_count(const char *s, long max, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || *s == '\0' || *end != '\0' || v < 0 || v > max) {
        return -1;
    }
    *out = v;
    return 0;
}

static void lower_limit(int resource, const char *value) {
    long v;
    if (parse_count(value, 0x7fffffffL, &v) == 0 && v > 0) {
        struct rlimit lim = {.rlim_cur = (rlim_t)v, .rlim_max = (rlim_t)v};
        setrlimit(resource, &lim);
    }
}

extern char **environ;

/* Reads the job header from stdin (see the top of this file); sets the job's
 * environment and limits and returns its argv, or NULL on EOF or a malformed job. */
static char **read_job(void) {
    char line[64];
    size_t n = 0;
    for (;;) { /* the header line, byte by byte: nothing past it may be consumed */
        if (n == sizeof line - 1 || read_exact(line + n, 1) != 0) {
            return NULL;
        }
        if (line[n] == '\n') {
            break;
        }
        n++;
    }
    line[n] = '\0';
    long len;
    if (strncmp(line, "CRUCIBLE-JOB ", 13) != 0 || parse_count(line + 13, MAX_JOB, &len) != 0) {
        fprintf(stderr, "crucible-init: malformed job header\n");
        return NULL;
    }
    char *job = malloc((size_t)len + 1);
    if (job == NULL || read_exact(job, (size_t)len) != 0) {
        return NULL;
    }
    job[len] = '\0';
    size_t pos = 0;
    long argc, envc;
    char *f = next_field(job, (size_t)len, &pos);
    if (f == NULL || parse_count(f, 1 << 20, &argc) != 0 || argc < 1) {
        return NULL;
    }
    char **args = calloc((size_t)argc + 1, sizeof *args);
    for (long i = 0; args != NULL && i < argc; i++) {
        if ((args[i] = next_field(job, (size_t)len, &pos)) == NULL) {
            return NULL;
        }
    }
    f = next_field(job, (size_t)len, &pos);
    if (args == NULL || f == NULL || parse_count(f, 1 << 20, &envc) != 0) {
        return NULL;
    }
    char **env = calloc((size_t)envc + 1, sizeof *env);
    for (long i = 0; env != NULL && i < envc; i++) {
        if ((env[i] = next_field(job, (size_t)len, &pos)) == NULL) {
            return NULL;
        }
    }
    char *fsize = next_field(job, (size_t)len, &pos);
    char *nproc = next_field(job, (size_t)len, &pos);
    if (env == NULL || fsize == NULL || nproc == NULL) {
        return NULL;
    }
    lower_limit(RLIMIT_FSIZE, fsize);
    lower_limit(RLIMIT_NPROC, nproc);
    environ = env; /* execvp searches this PATH, and the program inherits it */
    return args;
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
    char **program = argv + 1;
    if (argc < 2) {
        /* Job mode: wait for the program on stdin (see read_job). */
        program = read_job();
        if (program == NULL) {
            return 0; /* released without a job: a discarded warm sandbox */
        }
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
        execvp(program[0], program);
        fprintf(stderr, "crucible-init: cannot execute %s: %s\n", program[0], strerror(errno));
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
