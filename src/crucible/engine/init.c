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
 *
 * Long-lived sandboxes (session.py) use these modes, chosen by argv[1]:
 *
 *   --session                 PID 1 of the sandbox: reaps orphans until killed.
 *   --session --agent         the same, and the exec agent: forks the wrapper below
 *                             for each exec the engine sends on its stdin, a socket
 *                             (see "the exec agent" below, and agent.py).
 *   --exec USER CWD FLAGS -- ARGV...
 *                             the wrapper of one exec (started by the runtime's
 *                             `exec`): a child subreaper that runs ARGV as USER
 *                             ("" = stay root) in CWD under the seccomp filter and
 *                             exits with its status (code, or 128+signal). SIGUSR1
 *                             (the supervisor's timeout, forwarded by the runtime)
 *                             stops and kills the exec's whole process tree.
 *                             The fallback of the agent, and gVisor's way.
 *   --read PATH MAX           copy a regular file to stdout (at most MAX bytes)
 *   --write PATH              create parents, then copy stdin into PATH
 *
 * --read and --write run *inside* the sandbox, as its root, so every path the
 * untrusted program controls (symlinks, `..`, swapped directories) is resolved in
 * the sandbox's own mount namespace and root: nothing outside it can be reached.
 * Their failures are exit codes FILE_* below; the supervisor maps them to errors.
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
#include <dirent.h>
#include <grp.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <stdint.h>
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

/* Reads exactly n bytes from fd; 0 on success, -1 on EOF or error. */
static int read_full(int fd, void *buf, size_t n) {
    for (size_t got = 0; got < n;) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
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
        if (n == sizeof line - 1 || read_full(STDIN_FILENO, line + n, 1) != 0) {
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
    if (job == NULL || read_full(STDIN_FILENO, job, (size_t)len) != 0) {
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


/* Runs program under the seccomp filter, reaps everything until it ends, writes the
 * status trailer framed by nonce on stderr (see the top of this file) and returns
 * its status the shell's way (code, or 128+signal). This process is the reaper of
 * the program's namespace: its exit ends whatever the program left behind. */
static int run_program(char **program, const char *nonce) {
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


/* ---- long-lived sandboxes ------------------------------------------------------- */

enum { FILE_OK = 0, FILE_OTHER = 1, FILE_NOT_FOUND = 2, FILE_PERMISSION = 3, FILE_IS_DIR = 4,
       FILE_TOO_LARGE = 5 };

static int file_code(int err) {
    switch (err) {
    case ENOENT: case ENOTDIR: case ENAMETOOLONG: case ELOOP: return FILE_NOT_FOUND;
    case EACCES: case EPERM: case EROFS: return FILE_PERMISSION;
    case EISDIR: return FILE_IS_DIR;
    case EFBIG: case ENOSPC: case EDQUOT: return FILE_TOO_LARGE; /* or the disk is full */
    default: return FILE_OTHER;
    }
}

static int fail(const char *what, const char *path, int err) {
    fprintf(stderr, "crucible: %s %s: %s\n", what, path, strerror(err));
    return file_code(err);
}

static int copy_fd(int in, int out, long long max, long long *copied) {
    static char buf[1 << 16];
    *copied = 0;
    for (;;) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            return -1;
        }
        if (n == 0) {
            return 0;
        }
        *copied += n;
        if (max >= 0 && *copied > max) {
            errno = EFBIG;
            return -1;
        }
        for (ssize_t done = 0; done < n;) {
            ssize_t w = write(out, buf + done, (size_t)(n - done));
            if (w < 0 && errno == EINTR) {
                continue;
            }
            if (w < 0) {
                return -1;
            }
            done += w;
        }
    }
}

static int file_read(const char *path, const char *max_s) {
    char *end;
    long long max = strtoll(max_s, &end, 10);
    if (*max_s == '\0' || *end != '\0' || max < 0) {
        return FILE_OTHER;
    }
    /* O_NONBLOCK: a FIFO planted at the path must not hang the open. */
    int fd = open(path, O_RDONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        return fail("cannot read", path, errno);
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        return fail("cannot read", path, errno);
    }
    if (S_ISDIR(st.st_mode)) {
        return fail("cannot read", path, EISDIR);
    }
    if (!S_ISREG(st.st_mode)) {
        fprintf(stderr, "crucible: cannot read %s: not a regular file\n", path);
        return FILE_OTHER;
    }
    if (st.st_size > max) {
        return fail("cannot read", path, EFBIG);
    }
    fcntl(fd, F_SETFL, 0);
    long long copied;
    if (copy_fd(fd, STDOUT_FILENO, max, &copied) != 0) {
        return fail("cannot read", path, errno);
    }
    return FILE_OK;
}

static int file_write(const char *path) {
    char *dir = strdup(path);
    if (dir == NULL) {
        return FILE_OTHER;
    }
    /* mkdir -p of every parent; EEXIST (a directory, or a symlink to one) is fine. */
    for (char *p = dir + 1; *p != '\0'; p++) {
        if (*p != '/') {
            continue;
        }
        *p = '\0';
        if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
            return fail("cannot create directory", dir, errno);
        }
        *p = '/';
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOCTTY | O_NONBLOCK | O_CLOEXEC, 0644);
    if (fd < 0) {
        return fail("cannot write", path, errno);
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        fprintf(stderr, "crucible: cannot write %s: not a regular file\n", path);
        return FILE_OTHER;
    }
    fcntl(fd, F_SETFL, 0);
    long long copied;
    if (copy_fd(STDIN_FILENO, fd, -1, &copied) != 0 || close(fd) != 0) {
        return fail("cannot write", path, errno);
    }
    return FILE_OK;
}

static volatile sig_atomic_t kill_requested;

static void on_kill_request(int sig) {
    (void)sig;
    kill_requested = 1;
}

/* Parent pid of pid, from /proc/<pid>/stat (the field after the comm's last ')'). */
static pid_t parent_of(const char *pid) {
    char path[300], buf[512];
    snprintf(path, sizeof path, "/proc/%s/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) {
        return -1;
    }
    buf[n] = '\0';
    char *close_paren = strrchr(buf, ')');
    int ppid;
    char state;
    if (close_paren == NULL || sscanf(close_paren + 1, " %c %d", &state, &ppid) != 2) {
        return -1;
    }
    return (pid_t)ppid;
}

#define MAX_TREE 65536
static pid_t tree[MAX_TREE];

/* Stops, then kills, every descendant of this process. We are a child subreaper, so
 * no descendant can escape to PID 1 while we live (a daemon's double fork reparents
 * it to us). Stopped processes cannot fork: passes repeat until one finds nothing
 * new, then every stopped process gets SIGKILL. Reads /proc, not the optional
 * /proc/<pid>/task/<tid>/children, so it works under gVisor's kernel too. */
static void kill_tree(void) {
    size_t count = 0;
    pid_t self = getpid();
    for (int pass = 0; pass < 1000; pass++) {
        size_t before = count;
        DIR *proc = opendir("/proc");
        if (proc == NULL) {
            break;
        }
        struct dirent *e;
        while ((e = readdir(proc)) != NULL && count < MAX_TREE) {
            if (e->d_name[0] < '0' || e->d_name[0] > '9') {
                continue;
            }
            pid_t pid = (pid_t)atoi(e->d_name);
            if (pid == self) {
                continue;
            }
            /* A descendant: its parent is us or an already found process. */
            pid_t parent = parent_of(e->d_name);
            int ours = parent == self;
            for (size_t i = 0; !ours && i < count; i++) {
                ours = tree[i] == parent;
            }
            int known = 0;
            for (size_t i = 0; i < count; i++) {
                known |= tree[i] == pid;
            }
            if (ours && !known) {
                kill(pid, SIGSTOP);
                tree[count++] = pid;
            }
        }
        closedir(proc);
        if (count == before) {
            break;
        }
    }
    for (size_t i = 0; i < count; i++) {
        kill(tree[i], SIGKILL);
    }
}

static int find_user(const char *name, struct passwd *out) {
    /* /etc/passwd parsed here: a static binary cannot load NSS modules. */
    static char line[4096];
    FILE *f = fopen("/etc/passwd", "re");
    if (f == NULL) {
        return -1;
    }
    int found = -1;
    while (found != 0 && fgets(line, sizeof line, f) != NULL) {
        char *fields[7] = {0};
        char *p = line;
        int i = 0;
        for (; i < 7 && p != NULL; i++) {
            fields[i] = strsep(&p, ":");
        }
        if (i < 7 || fields[6] == NULL) {
            continue;
        }
        fields[6][strcspn(fields[6], "\n")] = '\0';
        char *end1, *end2;
        long uid = strtol(fields[2], &end1, 10), gid = strtol(fields[3], &end2, 10);
        if (*fields[2] == '\0' || *end1 != '\0' || *end2 != '\0' || uid < 0 || gid < 0) {
            continue;
        }
        /* by name, or by uid ("1000"): Inspect passes either */
        int named = strcmp(fields[0], name) == 0 || strcmp(fields[2], name) == 0;
        if ((name[0] != '\0' && named) || (name[0] == '\0' && uid == 0)) {
            out->pw_name = strdup(fields[0]);
            out->pw_uid = (uid_t)uid;
            out->pw_gid = (gid_t)gid;
            out->pw_dir = strdup(fields[5]);
            found = 0;
        }
    }
    fclose(f);
    return found;
}

/* The supplementary groups naming user in /etc/group, plus its primary group. */
static int user_groups(const char *user, gid_t primary, gid_t *groups, int max) {
    static char line[65536];
    int n = 0;
    groups[n++] = primary;
    FILE *f = fopen("/etc/group", "re");
    if (f == NULL) {
        return n;
    }
    while (n < max && fgets(line, sizeof line, f) != NULL) {
        char *p = line, *name = strsep(&p, ":"), *pw = strsep(&p, ":"), *gid = strsep(&p, ":");
        (void)name;
        (void)pw;
        if (gid == NULL || p == NULL) {
            continue;
        }
        p[strcspn(p, "\n")] = '\0';
        for (char *m; (m = strsep(&p, ",")) != NULL;) {
            if (strcmp(m, user) == 0) {
                groups[n++] = (gid_t)strtol(gid, NULL, 10);
                break;
            }
        }
    }
    fclose(f);
    return n;
}

/* The wrapper of one exec, whichever way it was started (the runtime's `exec` running
 * `--exec`, or the agent forking it): run program as user in cwd under the seccomp
 * filter as a child subreaper; returns its status (code, or 128+signal). */
static int run_wrapper(const char *user, const char *cwd, const char *flags, char **program) {
    int defaulted = strchr(flags, 'c') != NULL, keep_home = strchr(flags, 'h') != NULL;
    /* 'd': a service (compose's command): detached, in a session of its own, stdio on
     * /dev/null; the exec returns at once and the sandbox's init adopts it. */
    int detach = strchr(flags, 'd') != NULL;
    struct passwd pw = {0};
    if (find_user(user, &pw) != 0) {
        if (user[0] != '\0') {
            fprintf(stderr, "crucible: unable to find user %s: no matching entry in /etc/passwd\n",
                    user);
            return 126;
        }
        pw.pw_dir = "/";
    }
    setenv("HOME", pw.pw_dir, !keep_home); /* the runtime sets HOME for uid 0 */
    if (pw.pw_name != NULL) {
        setenv("USER", pw.pw_name, 0);
        setenv("LOGNAME", pw.pw_name, 0);
    }
    int instructions = read_filter();
    if (instructions < 0) {
        fprintf(stderr, "crucible-init: no seccomp filter at %s; refusing to run\n", SECCOMP_PATH);
        return 125;
    }
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    struct sigaction sa = {0};
    sa.sa_handler = on_kill_request;
    sigaction(SIGUSR1, &sa, NULL);
    int started[2] = {-1, -1}; /* detached: closed by a successful exec, else errno */
    if (detach && pipe2(started, O_CLOEXEC) != 0) {
        perror("crucible-init: pipe");
        return 125;
    }
    pid_t child = fork();
    if (child < 0) {
        perror("crucible-init: fork");
        return 125;
    }
    if (child == 0) {
        signal(SIGUSR1, SIG_DFL);
        if (user[0] != '\0') {
            static gid_t groups[256];
            int n = user_groups(pw.pw_name, pw.pw_gid, groups, 256);
            if (setgroups((size_t)n, groups) != 0 || setgid(pw.pw_gid) != 0 ||
                setuid(pw.pw_uid) != 0) {
                fprintf(stderr, "crucible: cannot become user %s: %s\n", user, strerror(errno));
                _exit(126);
            }
        }
        if (chdir(cwd) != 0) {
            /* The default directory may be closed to a non-root user: use its home. */
            if (!defaulted || (chdir(pw.pw_dir) != 0 && chdir("/") != 0)) {
                fprintf(stderr, "crucible: cannot change directory to %s: %s\n", cwd,
                        strerror(errno));
                _exit(126);
            }
        }
        if (detach) {
            int null = open("/dev/null", O_RDWR | O_CLOEXEC);
            if (null < 0 || setsid() < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0 ||
                dup2(null, 2) < 0) {
                _exit(126);
            }
        }
        struct sock_fprog prog = {.len = (unsigned short)instructions, .filter = filter};
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0) {
            fprintf(stderr, "crucible-init: cannot install seccomp filter: %s\n", strerror(errno));
            _exit(126);
        }
        execvp(program[0], program);
        int err = errno;
        if (detach) {
            (void)!write(started[1], &err, sizeof err);
        }
        fprintf(stderr, "crucible: cannot execute %s: %s\n", program[0], strerror(err));
        /* The shell's convention: 126 found but not executable, 127 not found. */
        _exit(err == ENOENT ? 127 : 126);
    }
    if (detach) {
        close(started[1]);
        int err = 0;
        if (read(started[0], &err, sizeof err) == (ssize_t)sizeof err) {
            fprintf(stderr, "crucible: cannot execute %s: %s\n", program[0], strerror(err));
            return err == ENOENT ? 127 : 126;
        }
        return 0;
    }
    int killed = 0;
    for (;;) {
        if (kill_requested && !killed) {
            kill_tree();
            killed = 1;
        }
        int st;
        pid_t pid = waitpid(-1, &st, 0);
        if (pid == child) {
            if (killed) {
                while (waitpid(-1, NULL, WNOHANG) > 0) { /* the killed tree's zombies */
                }
                return 128 + SIGKILL;
            }
            return WIFSIGNALED(st) ? 128 + WTERMSIG(st) : WEXITSTATUS(st);
        }
        if (pid < 0 && errno != EINTR) {
            return 125;
        }
    }
}

static int exec_mode(int argc, char **argv) {
    /* argv: init --exec USER CWD FLAGS -- ARGV... */
    if (argc < 7 || strcmp(argv[5], "--") != 0) {
        fprintf(stderr, "crucible-init: usage: --exec USER CWD FLAGS -- ARGV...\n");
        return 125;
    }
    return run_wrapper(argv[2], argv[3], argv[4], argv + 6);
}

static int session_mode(void) {
    /* PID 1 of a long-lived sandbox: reap orphans until the runtime kills us.
     * SIGCHLD is blocked and waited for (its default disposition would never wake a
     * pause()), then every exited child is collected. */
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    for (;;) {
        while (waitpid(-1, NULL, WNOHANG) > 0) {
        }
        sigwaitinfo(&chld, NULL);
    }
    return 0;
}

/* ---- the jobs of a reused one-shot sandbox (the agent's flag 'j') ------------------
 *
 * A one-shot sandbox can run many programs one after another (sandbox.py), each as
 * a job with namespaces of its own, so nothing one program leaves (processes, files,
 * SysV IPC, sockets, the pid counter) is there for the next. The container's PID 1,
 * its agent and the jobs' inits run no untrusted code; the container has no masked
 * /proc paths for that reason, and each job masks its own /proc as the runtime would.
 *
 * The agent clones the job's init into a new user namespace with new mount, pid,
 * IPC, UTS and network namespaces owned by it (it is PID 1 there) and tells the
 * engine (AGENT_STARTED). The engine, root on the host, moves it into the job's own
 * cgroup and writes its uid and gid maps (0 and 65534, each to itself: files keep
 * their owners), then releases it with one byte on its stdin. The job's init mounts
 * a fresh /proc with the masks, fresh tmpfs at /tmp and /dev/shm, binds the job's
 * directory (made by the engine under the workspace) over /workspace, brings the
 * loopback up, empties its bounding set, and waits: all this is done while the
 * sandbox's previous job runs. The run then sends the program on the same stdin, as
 * job mode takes it (read_job), and it runs as in job mode (run_program: seccomp, the
 * status trailer). The program execs as uid 65534, so it
 * keeps no capability even in its own namespace, and no_new_privs and nosuid mounts
 * give it none; the seccomp profile refuses it new namespaces. The job ends with its
 * init: the kernel kills what is left in its pid namespace, the mounts go with it.
 *
 * Fields after the exec's env (argv and env are unused: the program comes later, on
 * stdin, as in job mode): NONCE, TMPFS (mount options of /tmp and /dev/shm), JOBDIR,
 * then a count and the masked paths, then a count and the read-only paths. Any step
 * that fails ends the job with 125 before the program runs (fail closed: the engine
 * then discards the sandbox). */
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>

#define JOB_NAMESPACES \
    (CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET)

static int job_fail(const char *what, const char *path) {
    fprintf(stderr, "crucible-init: job set-up: %s %s: %s\n", what, path, strerror(errno));
    return 125;
}

/* The mounts of the job's init, PID 1 of its namespaces. */
static int job_mounts(const char *tmpfs, const char *jobdir, char **masked, long nmasked,
                      char **readonly, long nreadonly) {
    const unsigned long proc_flags = MS_NOSUID | MS_NODEV | MS_NOEXEC;
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) {
        return job_fail("cannot make private", "/");
    }
    if (mount("proc", "/proc", "proc", proc_flags, NULL) != 0) {
        return job_fail("cannot mount", "/proc");
    }
    for (long i = 0; i < nmasked; i++) {
        struct stat st;
        if (stat(masked[i], &st) != 0) {
            continue; /* as the runtimes do: a path this kernel lacks needs no mask */
        }
        int r = S_ISDIR(st.st_mode)
                    ? mount("tmpfs", masked[i], "tmpfs", MS_RDONLY | proc_flags, "size=0")
                    : mount("/dev/null", masked[i], NULL, MS_BIND, NULL);
        if (r != 0) {
            return job_fail("cannot mask", masked[i]);
        }
    }
    for (long i = 0; i < nreadonly; i++) {
        struct stat st;
        if (stat(readonly[i], &st) != 0) {
            continue;
        }
        if (mount(readonly[i], readonly[i], NULL, MS_BIND | MS_REC, NULL) != 0 ||
            mount(NULL, readonly[i], NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | proc_flags,
                  NULL) != 0) {
            return job_fail("cannot make read-only", readonly[i]);
        }
    }
    if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, tmpfs) != 0) {
        return job_fail("cannot mount", "/tmp");
    }
    if (mount("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, tmpfs) != 0) {
        return job_fail("cannot mount", "/dev/shm");
    }
    struct stat st;
    if (lstat(jobdir, &st) != 0 || !S_ISDIR(st.st_mode) ||
        mount(jobdir, "/workspace", NULL, MS_BIND, NULL) != 0 ||
        mount(NULL, "/workspace", NULL, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV, NULL) != 0) {
        return job_fail("cannot bind", jobdir);
    }
    return 0;
}

/* The job's init (cloned by the agent, stdio already the job's): released by the
 * engine, its mounts, its loopback; then it waits for its program. It is made ahead
 * of the run (while the sandbox's previous job runs): a process's move into a cgroup
 * waits for an RCU grace period, 10-15 ms on an idle host, which must not be paid by
 * the run. */
static int job_main(char *payload, size_t len, size_t pos) {
    char *nonce = next_field(payload, len, &pos), *tmpfs = next_field(payload, len, &pos);
    char *jobdir = next_field(payload, len, &pos), *f = next_field(payload, len, &pos);
    long nmasked = 0, nreadonly = 0;
    char *masked[64], *readonly[64];
    if (f == NULL || parse_count(f, 64, &nmasked) != 0) {
        return 125;
    }
    for (long i = 0; i < nmasked; i++) {
        if ((masked[i] = next_field(payload, len, &pos)) == NULL) {
            return 125;
        }
    }
    f = next_field(payload, len, &pos);
    if (f == NULL || parse_count(f, 64, &nreadonly) != 0) {
        return 125;
    }
    for (long i = 0; i < nreadonly; i++) {
        if ((readonly[i] = next_field(payload, len, &pos)) == NULL) {
            return 125;
        }
    }
    if (nonce == NULL || tmpfs == NULL || jobdir == NULL) {
        return 125;
    }
    /* Released by one byte on stdin once the engine has moved this process into the
     * job's cgroup and written its maps: nothing of the job runs before. */
    char go;
    if (read_full(STDIN_FILENO, &go, 1) != 0 || go != 'g') {
        return 125;
    }
    int failed = job_mounts(tmpfs, jobdir, masked, nmasked, readonly, nreadonly);
    if (failed != 0) {
        return failed;
    }
    if (chdir("/workspace") != 0) {
        return job_fail("cannot change directory to", "/workspace");
    }
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq ifr = {0};
    strcpy(ifr.ifr_name, "lo");
    if (sock < 0 || ioctl(sock, SIOCGIFFLAGS, &ifr) != 0) {
        return job_fail("cannot read the flags of", "lo");
    }
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(sock, SIOCSIFFLAGS, &ifr) != 0) {
        return job_fail("cannot bring up", "lo");
    }
    close(sock);
    /* The new user namespace gave this process a full bounding set: empty it, as the
     * runtime left the container's (the program keeps no capability either way). */
    for (int cap = 0; prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0; cap++) {
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) {
            return job_fail("cannot drop from the bounding set", "a capability");
        }
    }
    /* The program comes as in job mode (read_job: argv, env, rlimits), then its stdin;
     * EOF first: the sandbox was discarded with this job unused. */
    char **program = read_job();
    if (program == NULL) {
        return 0;
    }
    return run_program(program, nonce);
}


/* ---- the exec agent (--session --agent) ------------------------------------------
 *
 * PID 1 of a long-lived sandbox started with a unix socket (SOCK_STREAM) as its
 * stdin, the other end held by the engine (agent.py): the channel. Nothing inside
 * the sandbox can reach it. It has no name (a socketpair: no path, no abstract
 * address, and the sandbox has a network namespace of its own); it is never
 * inherited (every wrapper replaces fd 0 before anything else, and closes every fd
 * above 2); and this process is non-dumpable, so /proc/1/fd, pidfd_getfd() and
 * process_vm_readv() need CAP_SYS_PTRACE over the sandbox's user namespace, which
 * the sandbox's root is never given (ptrace and pidfd_getfd are also not in the
 * seccomp profile). Signals sent from inside the pid namespace to its init are
 * dropped by the kernel unless it handles them: only SIGCHLD is (through a
 * signalfd), and a forged SIGCHLD only makes it reap early.
 *
 * Requests (engine -> agent): a header of struct request, then `length` bytes.
 *   AGENT_EXEC    with three fds (SCM_RIGHTS: stdin, stdout, stderr of the exec,
 *                 made by the engine); payload: NUL-terminated USER, CWD, FLAGS,
 *                 argc, argv..., envc, env... (as --exec takes them, plus the env).
 *   AGENT_SIGNAL  payload: an int, SIGUSR1 (tree kill) or SIGKILL (the wrapper).
 * Replies (agent -> engine): struct reply, one per exec, when its wrapper has been
 * reaped: its status (code, or 128+signal), wall time, and the CPU time and peak
 * RSS of the wrapper and every descendant it reaped (wait4's rusage). A job (flag
 * 'j', see above) also gets AGENT_STARTED when its wrapper has been forked.
 *
 * Everything that reads the sandbox's file system (/etc/passwd, the filter, the
 * directory) happens in the forked wrapper, never here: a FIFO the program planted
 * can block one exec, not the agent. */
#include <poll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>

enum { AGENT_EXEC = 1, AGENT_SIGNAL = 2, AGENT_EXITED = 1, AGENT_STARTED = 2 };
struct request {
    uint32_t kind;
    uint32_t length;
    uint64_t id;
};
struct reply {
    uint32_t kind;
    int32_t code;
    uint64_t id;
    int64_t wall_us, user_us, sys_us, maxrss_kb;
};

#define MAX_EXECS 4096
#define MAX_REQUEST (8 << 20) /* session.py's MAX_ARGS_BYTES is 2 MiB */
static struct {
    uint64_t id;
    pid_t pid;
    int job; /* a job's init: SIGUSR1 is SIGKILL, its pid namespace goes with it */
    struct timespec t0;
} execs[MAX_EXECS];
static int nexecs;
static int channel = 0; /* fd 0, -1 once the engine's end is closed */

static void send_reply(const struct reply *r) {
    if (channel < 0) {
        return;
    }
    for (size_t done = 0; done < sizeof *r;) {
        ssize_t w = send(channel, (const char *)r + done, sizeof *r - done, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return;
        }
        done += (size_t)w;
    }
}

static void close_from(int low) {
    if (syscall(SYS_close_range, (unsigned)low, ~0U, 0) == 0) {
        return;
    }
    /* Kernels before 5.9, and gVisor 20221219 (where each close is a trip through the
     * sentry): the open ones, as /proc/self/fd lists them. */
    DIR *fds = opendir("/proc/self/fd");
    if (fds != NULL) {
        int own = dirfd(fds);
        struct dirent *e;
        while ((e = readdir(fds)) != NULL) {
            int fd = atoi(e->d_name);
            if (fd >= low && fd != own) {
                close(fd);
            }
        }
        closedir(fds);
        return;
    }
    /* No fd is above the hard RLIMIT_NOFILE (the runtime sets it: 4096). */
    struct rlimit lim;
    int top = getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_max < 65536 ? (int)lim.rlim_max
                                                                           : 65536;
    for (int fd = low; fd < top; fd++) {
        close(fd);
    }
}

static void start_exec(uint64_t id, char *payload, size_t len, int fds[3], const sigset_t *old) {
    size_t pos = 0;
    char *user = next_field(payload, len, &pos), *cwd = next_field(payload, len, &pos);
    char *flags = next_field(payload, len, &pos), *f = next_field(payload, len, &pos);
    long argc = 0, envc = 0;
    char **argv = NULL, **env = NULL;
    int ok = flags != NULL && f != NULL && parse_count(f, 1 << 20, &argc) == 0 && argc >= 1 &&
             nexecs < MAX_EXECS && (argv = calloc((size_t)argc + 1, sizeof *argv)) != NULL;
    for (long i = 0; ok && i < argc; i++) {
        ok = (argv[i] = next_field(payload, len, &pos)) != NULL;
    }
    f = ok ? next_field(payload, len, &pos) : NULL;
    ok = ok && f != NULL && parse_count(f, 1 << 20, &envc) == 0 &&
         (env = calloc((size_t)envc + 1, sizeof *env)) != NULL;
    for (long i = 0; ok && i < envc; i++) {
        ok = (env[i] = next_field(payload, len, &pos)) != NULL;
    }
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int job = flags != NULL && strchr(flags, 'j') != NULL;
    /* A job's init is cloned straight into its namespaces (see above); clone with no
     * stack returns in the child as fork does. */
    pid_t pid = !ok ? -1 : job ? (pid_t)syscall(SYS_clone, JOB_NAMESPACES | SIGCHLD, 0, 0, 0, 0)
                               : fork();
    if (pid == 0) {
        /* The wrapper: the exec's stdio first (fd 0 was the channel), nothing else. */
        sigprocmask(SIG_SETMASK, old, NULL);
        if (dup2(fds[0], 0) < 0 || dup2(fds[1], 1) < 0 || dup2(fds[2], 2) < 0) {
            _exit(125);
        }
        close_from(3);
        setsid(); /* kill(0, ...) in the exec reaches its own tree, not the agent's group */
        environ = env;
        _exit(job ? job_main(payload, len, pos) : run_wrapper(user, cwd, flags, argv));
    }
    if (pid < 0) {
        const char *why = ok ? strerror(errno) : "malformed request";
        dprintf(fds[2], "crucible-init: cannot start the exec: %s\n", why);
        struct reply r = {.kind = AGENT_EXITED, .code = 125, .id = id};
        send_reply(&r);
    } else {
        if (job) { /* the engine moves it into the job's cgroup and maps its ids now */
            struct reply r = {.kind = AGENT_STARTED, .id = id};
            send_reply(&r);
        }
        execs[nexecs].id = id;
        execs[nexecs].job = job;
        execs[nexecs].pid = pid;
        execs[nexecs].t0 = t0;
        nexecs++;
    }
    free(argv);
    free(env);
}

static void signal_exec(uint64_t id, int sig) {
    if (sig != SIGUSR1 && sig != SIGKILL) {
        return;
    }
    for (int i = 0; i < nexecs; i++) {
        if (execs[i].id == id) { /* still unreaped: the pid cannot have been reused */
            kill(execs[i].pid, execs[i].job ? SIGKILL : sig);
        }
    }
}

/* One request from the channel; -1 when the engine's end is closed (or broken). */
static int handle_request(const sigset_t *old) {
    struct request req;
    int fds[3] = {-1, -1, -1}, nfds = 0;
    union {
        char buf[CMSG_SPACE(sizeof fds)];
        struct cmsghdr align;
    } control;
    struct iovec iov = {.iov_base = &req, .iov_len = sizeof req};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof control.buf};
    ssize_t n;
    do {
        n = recvmsg(channel, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n <= 0) {
        return -1;
    }
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            int got[3];
            memcpy(got, CMSG_DATA(c), (count > 3 ? 3 : count) * sizeof(int));
            for (size_t i = 0; i < count && i < 3; i++) {
                fds[nfds++] = got[i];
            }
        }
    }
    int bad = (msg.msg_flags & MSG_CTRUNC) != 0 ||
              read_full(channel, (char *)&req + n, sizeof req - (size_t)n) != 0 ||
              req.length > MAX_REQUEST;
    char *payload = bad ? NULL : malloc((size_t)req.length + 1);
    if (!bad && (payload == NULL || read_full(channel, payload, req.length) != 0)) {
        bad = 1;
    }
    if (!bad && req.kind == AGENT_EXEC && nfds == 3) {
        payload[req.length] = '\0';
        start_exec(req.id, payload, req.length, fds, old);
    } else if (!bad && req.kind == AGENT_EXEC) { /* never sent so: still, an answer */
        struct reply r = {.kind = AGENT_EXITED, .code = 125, .id = req.id};
        send_reply(&r);
    } else if (!bad && req.kind == AGENT_SIGNAL && req.length == sizeof(int)) {
        int sig;
        memcpy(&sig, payload, sizeof sig);
        signal_exec(req.id, sig);
    }
    for (int i = 0; i < nfds; i++) {
        close(fds[i]);
    }
    free(payload);
    return bad ? -1 : 0; /* the engine is trusted: a malformed stream is a broken one */
}

static void reap(void) {
    int st;
    struct rusage ru;
    pid_t pid;
    while ((pid = wait4(-1, &st, WNOHANG, &ru)) > 0) {
        for (int i = 0; i < nexecs; i++) {
            if (execs[i].pid != pid) {
                continue;
            }
            struct timespec t1;
            clock_gettime(CLOCK_MONOTONIC, &t1);
            struct reply r = {
                .kind = AGENT_EXITED,
                .code = WIFSIGNALED(st) ? 128 + WTERMSIG(st) : WEXITSTATUS(st),
                .id = execs[i].id,
                .wall_us = (int64_t)(t1.tv_sec - execs[i].t0.tv_sec) * 1000000 +
                           (t1.tv_nsec - execs[i].t0.tv_nsec) / 1000,
                .user_us = (int64_t)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec,
                .sys_us = (int64_t)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec,
                .maxrss_kb = ru.ru_maxrss,
            };
            execs[i] = execs[--nexecs];
            send_reply(&r);
            break;
        }
    }
}

static int agent_mode(void) {
    struct stat st;
    if (fstat(channel, &st) != 0 || !S_ISSOCK(st.st_mode)) {
        fprintf(stderr, "crucible-init: --agent needs the engine's socket as stdin\n");
        return 125;
    }
    fcntl(channel, F_SETFD, FD_CLOEXEC);
    sigset_t chld, old;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, &old);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) {
        perror("crucible-init: signalfd");
        return 125;
    }
    for (;;) {
        struct pollfd p[2] = {{.fd = sfd, .events = POLLIN}, {.fd = channel, .events = POLLIN}};
        if (poll(p, channel < 0 ? 1 : 2, -1) < 0 && errno != EINTR) {
            return 125;
        }
        if (p[0].revents) {
            struct signalfd_siginfo info;
            while (read(sfd, &info, sizeof info) > 0) {
            }
        }
        reap(); /* also when only the channel woke us: cheap, and nothing is missed */
        if (channel >= 0 && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            if (handle_request(&old) != 0) {
                /* The engine is gone: no more execs; keep reaping until killed. */
                close(channel);
                channel = -1;
            }
        }
    }
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
    if (argc == 3 && strcmp(argv[1], "--session") == 0 && strcmp(argv[2], "--agent") == 0) {
        return agent_mode();
    }
    if (argc >= 2 && strcmp(argv[1], "--session") == 0) {
        return session_mode();
    }
    if (argc >= 2 && strcmp(argv[1], "--exec") == 0) {
        return exec_mode(argc, argv);
    }
    if (argc == 4 && strcmp(argv[1], "--read") == 0) {
        return file_read(argv[2], argv[3]);
    }
    if (argc == 3 && strcmp(argv[1], "--write") == 0) {
        return file_write(argv[2]);
    }
    char **program = argv + 1;
    if (argc < 2) {
        /* Job mode: wait for the program on stdin (see read_job). */
        program = read_job();
        if (program == NULL) {
            return 0; /* released without a job: a discarded warm sandbox */
        }
    }

    return run_program(program, nonce);
}
