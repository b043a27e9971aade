/* Preloaded (through /etc/ld.so.preload) into gVisor sandboxes only.
 *
 * Debian's runsc (release 20221219) answers EINVAL to statx() with AT_NO_AUTOMOUNT,
 * and coreutils 9 passes that flag on every stat: `ls -l`, `ls /`, `stat` fail with
 * "Invalid argument". A sandbox has no automount points, so the flag means nothing
 * there: this statx() drops it and makes the system call itself.
 *
 * No C library is linked (-nostdlib): the system call is made here, and errno is set
 * through __errno_location, which glibc and musl both export, so the object loads
 * into any dynamically linked program. Statically linked programs, and anything that
 * calls the system call without glibc's statx(), are not affected.
 */
#define AT_NO_AUTOMOUNT 0x800

struct statx;
int *__errno_location(void);

static long raw_statx(long dirfd, long path, long flags, long mask, long buf) {
    long ret;
#if defined(__x86_64__)
    register long r10 __asm__("r10") = mask;
    register long r8 __asm__("r8") = buf;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(332L), "D"(dirfd), "S"(path), "d"(flags), "r"(r10), "r"(r8)
                     : "rcx", "r11", "memory");
#elif defined(__aarch64__)
    register long x8 __asm__("x8") = 291L;
    register long x0 __asm__("x0") = dirfd;
    register long x1 __asm__("x1") = path;
    register long x2 __asm__("x2") = flags;
    register long x3 __asm__("x3") = mask;
    register long x4 __asm__("x4") = buf;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4) : "memory");
    ret = x0;
#else
#error "gvisor_statx.c: x86_64 and aarch64 only"
#endif
    return ret;
}

int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *buf) {
    long r = raw_statx(dirfd, (long)path, flags & ~AT_NO_AUTOMOUNT, mask, (long)buf);
    if (r < 0 && r > -4096) {
        *__errno_location() = (int)-r;
        return -1;
    }
    return (int)r;
}
