/* Escape attempts run inside a container by tests/engine/test_confinement.py (built there with
 * gcc -static). Each prints "<name> ok" or "<name> <errno name>" and exits 0; the test decides.
 *   probe unshare-user | keyctl | add-key | mount | bpf | ptrace <pid> | open-exe <pid>
 *         read-dev <path> | write-via-fd <path>
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <unistd.h>

static int report(const char *name, long rc) {
    if (rc < 0)
        printf("%s %s\n", name, strerrorname_np(errno) ? strerrorname_np(errno) : "E?");
    else
        printf("%s ok\n", name);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    const char *op = argv[1];
    if (!strcmp(op, "unshare-user"))
        return report(op, unshare(CLONE_NEWUSER));
    if (!strcmp(op, "keyctl")) /* KEYCTL_GET_KEYRING_ID of the session keyring */
        return report(op, syscall(SYS_keyctl, 0, -3, 0));
    if (!strcmp(op, "add-key"))
        return report(op, syscall(SYS_add_key, "user", "dockyard", "x", 1, -3));
    if (!strcmp(op, "mount"))
        return report(op, mount("none", "/tmp", "tmpfs", 0, NULL));
    if (!strcmp(op, "bpf")) /* BPF_PROG_LOAD with an empty attr: EPERM when filtered, EINVAL/EFAULT otherwise */
        return report(op, syscall(SYS_bpf, 5, NULL, 0));
    if (!strcmp(op, "ptrace") && argc > 2) {
        long rc = ptrace(PTRACE_ATTACH, atoi(argv[2]), NULL, NULL);
        return report(op, rc);
    }
    if (!strcmp(op, "open-exe") && argc > 2) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%s/exe", argv[2]);
        return report(op, open(path, O_WRONLY));
    }
    if (!strcmp(op, "read-dev") && argc > 2) {
        int fd = open(argv[2], O_RDONLY);
        if (fd < 0)
            return report(op, -1);
        char c;
        return report(op, read(fd, &c, 1));
    }
    if (!strcmp(op, "write-via-fd") && argc > 2) { /* O_PATH, then reopen for writing through /proc/self/fd */
        int fd = open(argv[2], O_PATH);
        if (fd < 0)
            return report("open-path", -1);
        char path[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        return report(op, open(path, O_WRONLY));
    }
    return 2;
}
