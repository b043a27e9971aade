/* crucible-hidecg: run a command with some cgroup2 mounts hidden from it.
 *
 * crun 1.8 refuses a cgroup "hybrid" host (v1 controllers under /sys/fs/cgroup plus
 * a cgroup2 mount such as /sys/fs/cgroup/unified): "cgroups in hybrid mode not
 * supported, drop all controllers from cgroupv2". Hidden from it, crun drives the v1
 * controllers like runc does. So: a private mount namespace (slave, so the host's
 * later mounts still reach it), the given mounts detached there, then exec.
 *
 * usage: crucible-hidecg MOUNTPOINT... -- COMMAND [ARG...]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int sep = 1;
    while (sep < argc && strcmp(argv[sep], "--") != 0) sep++;
    if (sep + 1 >= argc) {
        fprintf(stderr, "usage: crucible-hidecg MOUNTPOINT... -- COMMAND [ARG...]\n");
        return 125;
    }
    if (unshare(CLONE_NEWNS) != 0) {
        perror("crucible-hidecg: unshare(CLONE_NEWNS)");
        return 125;
    }
    if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) != 0) {
        perror("crucible-hidecg: make / a slave mount");
        return 125;
    }
    for (int i = 1; i < sep; i++) {
        if (umount2(argv[i], MNT_DETACH) != 0 && errno != EINVAL && errno != ENOENT) {
            fprintf(stderr, "crucible-hidecg: umount %s: %s\n", argv[i], strerror(errno));
            return 125;
        }
    }
    execv(argv[sep + 1], argv + sep + 1);
    fprintf(stderr, "crucible-hidecg: exec %s: %s\n", argv[sep + 1], strerror(errno));
    return 127;
}
