/*
 * diskfault.c - an LD_PRELOAD shim: a disk that refuses to sync, turned on and off live.
 *
 * Built by `edgectl.chaos.diskfault` with gcc into a run's work dir and loaded into every
 * node of a fault run (or a test's cluster) through LD_PRELOAD.
 *
 * EDGEPOP_DISKFAULT_FLAG names a file. While it exists, fsync and fdatasync of a file
 * whose path contains one of the flag's lines fail with EIO and sync nothing, as a
 * failing disk's would; an empty flag refuses every file. (msync is not wrapped: the
 * nodes' LMDB stores run without MDB_WRITEMAP, so they sync with fdatasync.) It is read
 * at every sync (one failed open() while it does not exist), so a fault starts and ends
 * when the flag file is written or removed, in every process at once.
 *
 * Why at the libc boundary: LMDB (inside py-lmdb), SQLite (inside apsw) and Python's
 * os.fsync all sync through these calls, so each store meets the error its own code
 * path would meet on a real disk, with no hook in the code under test.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FLAG_BYTES_MAX 4096

static int (*real_fsync)(int);
static int (*real_fdatasync)(int);

static void *next_symbol(const char *name) {
    void *symbol = dlsym(RTLD_NEXT, name);
    if (symbol == NULL) {
        fprintf(stderr, "diskfault: no %s to wrap\n", name);
        abort();
    }
    return symbol;
}

__attribute__((constructor)) static void resolve(void) {
    real_fsync = next_symbol("fsync");
    real_fdatasync = next_symbol("fdatasync");
}

/* Whether the flag refuses a sync of `path` now. */
static int refused(const char *path) {
    const char *flag_path = getenv("EDGEPOP_DISKFAULT_FLAG");
    if (flag_path == NULL || flag_path[0] == '\0') return 0;
    int flag = open(flag_path, O_RDONLY | O_CLOEXEC);
    if (flag < 0) return 0;
    char listed[FLAG_BYTES_MAX];
    ssize_t length = read(flag, listed, sizeof listed - 1);
    close(flag);
    if (length <= 0) return 1; /* an empty flag: every file */
    listed[length] = '\0';
    char *rest = NULL; /* strtok_r: several threads of a process may sync at once */
    for (char *line = strtok_r(listed, "\n", &rest); line != NULL;
         line = strtok_r(NULL, "\n", &rest))
        if (line[0] != '\0' && strstr(path, line) != NULL) return 1;
    return 0;
}

static int fd_refused(int fd) {
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t length = readlink(link, path, sizeof path - 1);
    if (length <= 0) return 0;
    path[length] = '\0';
    return refused(path);
}

int fsync(int fd) {
    if (fd_refused(fd)) {
        errno = EIO;
        return -1;
    }
    return real_fsync(fd);
}

int fdatasync(int fd) {
    if (fd_refused(fd)) {
        errno = EIO;
        return -1;
    }
    return real_fdatasync(fd);
}
