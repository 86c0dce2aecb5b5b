/*
 * powerloss.c - an LD_PRELOAD shim that records what of a file the disk would keep
 * through a power loss (the idea of Jepsen's LazyFS, at the libc boundary).
 *
 * Test-only. Built by the test with gcc into its temp dir (see __init__.py beside it)
 * and loaded into every process of a cluster through LD_PRELOAD.
 *
 * Configuration (read once, when the library loads):
 *   EDGEPOP_POWERLOSS_ROOT   a directory; only files under it are watched (unset: the
 *                            shim does nothing at all)
 *   EDGEPOP_POWERLOSS_NAMES  comma-separated base names of the watched files
 *                            (default "data.mdb", LMDB's data file)
 *
 * Model. The bytes of a watched file that a power loss cannot take away live in a shadow
 * file beside it, PATH.synced (absent: nothing of the file was ever made durable). The
 * shadow moves forward only at the calls that promise durability:
 *   - fsync / fdatasync: the whole file as it was when the call started (a write that
 *     completed before the call is covered by it; one racing it from another thread may
 *     not be, so it is left out). The copy is staged before the real call and put in
 *     place by rename after it succeeds, so a process killed mid-way leaves the previous
 *     shadow whole.
 *   - a write through a descriptor opened with O_DSYNC or O_SYNC (LMDB writes its meta
 *     page that way): exactly the bytes written, at their offset, once the write returns.
 *   - msync(MS_SYNC): the synced range of the mapped file.
 *   - sync / syncfs: every watched file under the root.
 * Everything else (plain writes, the page cache) is what a power loss drops. The test
 * then simulates one: SIGKILL every process, put each shadow in place of its file (a
 * file never synced disappears), restart.
 *
 * Why this is safe to trust: a durability call the shim does not see can only leave the
 * shadow OLDER than what the disk would hold, so the test could fail spuriously but never
 * pass wrongly; a reply sent after a sync call is sent after the shadow holds its bytes.
 * sync_file_range is deliberately not a durability point (it flushes neither metadata
 * nor the device cache). Directory entries are not modelled: a file that was synced once
 * is taken to exist; an unlink of a watched file drops its shadow too (taken as durable
 * at once, as LMDB files are only deleted by a store discarding itself). Renames onto a
 * watched name and truncation are not modelled: nothing renames onto LMDB's files, and
 * LMDB only grows its data file (it truncates only with MDB_WRITEMAP, off here).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define SHADOW_SUFFIX ".synced"
#define NAMES_MAX 8
#define NAME_BYTES_MAX 64
#define COPY_CHUNK_BYTES (1 << 20)

static char root[PATH_MAX];
static size_t root_len;
static char names[NAMES_MAX][NAME_BYTES_MAX];
static int names_count;
static int active;

/* One process may sync from several threads (a PoP's replica flush and its object
 * commits): the stage-sync-publish sequence and the O_DSYNC mirror must not interleave,
 * or a rename could put back a shadow that misses a mirrored write. */
static pthread_mutex_t shadow_lock = PTHREAD_MUTEX_INITIALIZER;

static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_msync)(void *, size_t, int);
static void (*real_sync)(void);
static int (*real_syncfs)(int);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static int (*real_unlink)(const char *);
static int (*real_unlinkat)(int, const char *, int);

static void *next_symbol(const char *name) {
    void *symbol = dlsym(RTLD_NEXT, name);
    if (symbol == NULL) {
        fprintf(stderr, "powerloss: no %s to wrap\n", name);
        abort();
    }
    return symbol;
}

/* Fork in the zygote while another thread holds the lock must not leave the child
 * with a lock nobody will release. */
static void before_fork(void) { pthread_mutex_lock(&shadow_lock); }
static void after_fork(void) { pthread_mutex_unlock(&shadow_lock); }

static void resolve_and_configure(void) {
    real_fsync = next_symbol("fsync");
    real_fdatasync = next_symbol("fdatasync");
    real_msync = next_symbol("msync");
    real_sync = next_symbol("sync");
    real_syncfs = next_symbol("syncfs");
    real_write = next_symbol("write");
    real_pwrite = next_symbol("pwrite");
    real_pwrite64 = next_symbol("pwrite64");
    real_writev = next_symbol("writev");
    real_unlink = next_symbol("unlink");
    real_unlinkat = next_symbol("unlinkat");
    pthread_atfork(before_fork, after_fork, after_fork);

    const char *configured = getenv("EDGEPOP_POWERLOSS_ROOT");
    if (configured == NULL || configured[0] == '\0') return;
    /* Paths are compared as the kernel reports them (/proc/self/fd), so canonically. */
    if (realpath(configured, root) == NULL) {
        fprintf(stderr, "powerloss: EDGEPOP_POWERLOSS_ROOT %s: %s\n", configured,
                strerror(errno));
        abort();
    }
    root_len = strlen(root);
    const char *list = getenv("EDGEPOP_POWERLOSS_NAMES");
    if (list == NULL || list[0] == '\0') list = "data.mdb";
    while (*list != '\0' && names_count < NAMES_MAX) {
        size_t length = strcspn(list, ",");
        if (length > 0 && length < NAME_BYTES_MAX) {
            memcpy(names[names_count], list, length);
            names[names_count][length] = '\0';
            names_count++;
        }
        list += length;
        if (*list == ',') list++;
    }
    active = 1;
}

/* Run once, from the constructor or from the first wrapped call if another library's
 * constructor writes before ours has run (the order of constructors is not ours). */
static pthread_once_t initialised = PTHREAD_ONCE_INIT;

static void initialise(void) { pthread_once(&initialised, resolve_and_configure); }

__attribute__((constructor)) static void powerloss_init(void) { initialise(); }

/* snprintf into a path buffer; a path that does not fit is a failure, never cut short. */
__attribute__((format(printf, 2, 3))) static void path_printf(char out[PATH_MAX],
                                                              const char *format, ...) {
    va_list arguments;
    va_start(arguments, format);
    int length = vsnprintf(out, PATH_MAX, format, arguments);
    va_end(arguments);
    if (length < 0 || length >= PATH_MAX) {
        fprintf(stderr, "powerloss: a path is too long: %s...\n", out);
        abort();
    }
}

/* Whether the canonical `path` is a watched file: under the root, with a watched name. */
static int watched(const char *path) {
    if (strncmp(path, root, root_len) != 0 || path[root_len] != '/') return 0;
    const char *base = strrchr(path, '/') + 1;
    for (int index = 0; index < names_count; index++)
        if (strcmp(base, names[index]) == 0) return 1;
    return 0;
}

/* The watched file behind `fd` into `path` (1), or 0 for any other descriptor. An
 * unlinked file reads as "PATH (deleted)", whose base name matches nothing. */
static int watched_fd(int fd, char path[PATH_MAX]) {
    if (!active || fd < 0) return 0;
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t length = readlink(link, path, PATH_MAX - 1);
    if (length <= 0) return 0;
    path[length] = '\0';
    return watched(path);
}

static int synchronous_fd(int fd) {
    int flags = fcntl(fd, F_GETFL);
    return flags != -1 && (flags & (O_DSYNC | O_SYNC)) != 0;
}

static void shadow_of(const char *path, char out[PATH_MAX]) {
    path_printf(out, "%s" SHADOW_SUFFIX, path);
}

/* Copy [offset, offset + length) of `from` into `to` at the same offset. */
static int copy_range(int from, int to, off_t offset, off_t length) {
    char *buffer = NULL;
    while (length > 0) {
        size_t chunk = length < COPY_CHUNK_BYTES ? (size_t)length : COPY_CHUNK_BYTES;
        off_t in = offset, out = offset;
        ssize_t copied = copy_file_range(from, &in, to, &out, chunk, 0);
        if (copied < 0) {
            /* Filesystems without copy_file_range: plain reads and writes. */
            if (buffer == NULL && (buffer = malloc(COPY_CHUNK_BYTES)) == NULL) return -1;
            copied = pread(from, buffer, chunk, offset);
            if (copied > 0 && real_pwrite(to, buffer, (size_t)copied, offset) != copied)
                copied = -1;
        }
        if (copied < 0) {
            free(buffer);
            return -1;
        }
        if (copied == 0) break; /* the file is shorter than it was a moment ago */
        offset += copied;
        length -= copied;
    }
    free(buffer);
    return 0;
}

/* Stage the shadow `path` would have once [offset, offset + length) of it is durable
 * (length < 0: the whole file): the current shadow with that range taken from the file,
 * into a temporary file whose name goes to `staged`. 0 on success. */
static int stage(const char *path, off_t offset, off_t length, char staged[PATH_MAX]) {
    char shadow[PATH_MAX];
    shadow_of(path, shadow);
    path_printf(staged, "%s.tmp.%ld", shadow, (long)syscall(SYS_gettid));
    int source = open(path, O_RDONLY | O_CLOEXEC);
    if (source < 0) return -1;
    int target = open(staged, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (target < 0) {
        close(source);
        return -1;
    }
    int result = -1;
    struct stat file;
    if (fstat(source, &file) == 0) {
        off_t durable_size = file.st_size;
        if (length < 0) {
            offset = 0;
            length = file.st_size;
        } else {
            /* Only the range becomes durable: everything else is the old shadow's. */
            int old = open(shadow, O_RDONLY | O_CLOEXEC);
            struct stat before = {0};
            if (old >= 0) {
                if (fstat(old, &before) != 0 || copy_range(old, target, 0, before.st_size) != 0)
                    before.st_size = -1;
                close(old);
            }
            if (offset + length > file.st_size) length = file.st_size - offset;
            if (length < 0) length = 0;
            durable_size = before.st_size > offset + length ? before.st_size : offset + length;
            if (before.st_size < 0) goto done;
        }
        if (copy_range(source, target, offset, length) == 0 &&
            ftruncate(target, durable_size) == 0)
            result = 0;
    }
done:
    close(target);
    close(source);
    if (result != 0) real_unlink(staged);
    return result;
}

/* Put a staged shadow in place (atomically: a kill leaves the old one or the new). */
static void publish(const char *path, const char *staged) {
    char shadow[PATH_MAX];
    shadow_of(path, shadow);
    if (rename(staged, shadow) != 0) {
        fprintf(stderr, "powerloss: cannot publish %s: %s\n", shadow, strerror(errno));
        abort();
    }
}

static void stage_failed(const char *path) {
    /* Never pretend: a sync the model cannot record would make the test unsound. */
    fprintf(stderr, "powerloss: cannot stage the synced state of %s: %s\n", path,
            strerror(errno));
    abort();
}

/* A whole-file sync of `fd` through `sync_call` (fsync or fdatasync). */
static int whole_file_sync(int fd, int (*sync_call)(int)) {
    char path[PATH_MAX], staged[PATH_MAX];
    if (!watched_fd(fd, path)) return sync_call(fd);
    pthread_mutex_lock(&shadow_lock);
    if (stage(path, 0, -1, staged) != 0) stage_failed(path);
    int result = sync_call(fd);
    int saved = errno;
    if (result == 0)
        publish(path, staged);
    else
        real_unlink(staged);
    pthread_mutex_unlock(&shadow_lock);
    errno = saved;
    return result;
}

int fsync(int fd) {
    initialise();
    return whole_file_sync(fd, real_fsync);
}

int fdatasync(int fd) {
    initialise();
    return whole_file_sync(fd, real_fdatasync);
}

/* Write `count` bytes of `iov` (as written to the file) into the shadow at `offset`. */
static void mirror(const char *path, const struct iovec *iov, int iovcnt, off_t offset,
                   size_t count) {
    char shadow[PATH_MAX];
    shadow_of(path, shadow);
    int target = open(shadow, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (target < 0) stage_failed(path);
    for (int index = 0; index < iovcnt && count > 0; index++) {
        size_t part = iov[index].iov_len < count ? iov[index].iov_len : count;
        if (real_pwrite(target, iov[index].iov_base, part, offset) != (ssize_t)part)
            stage_failed(path);
        offset += (off_t)part;
        count -= part;
    }
    close(target);
}

/* The write calls the shim wraps, called for real. */
enum write_kind { WRITE, PWRITE, PWRITE64, WRITEV };

static ssize_t real_write_call(enum write_kind kind, int fd, const struct iovec *iov,
                               int iovcnt, off_t offset) {
    switch (kind) {
    case WRITE:
        return real_write(fd, iov[0].iov_base, iov[0].iov_len);
    case PWRITE:
        return real_pwrite(fd, iov[0].iov_base, iov[0].iov_len, offset);
    case PWRITE64:
        return real_pwrite64(fd, iov[0].iov_base, iov[0].iov_len, offset);
    case WRITEV:
        return real_writev(fd, iov, iovcnt);
    }
    errno = EINVAL;
    return -1;
}

/* A write to a watched file through an O_DSYNC/O_SYNC descriptor is durable when it
 * returns: the written bytes go to the shadow too. `offset` < 0: at the file position.
 * The flags are checked first: that costs one fcntl per write, the path lookup only
 * follows for synchronous descriptors (LMDB's meta descriptor). */
static ssize_t checked_write(enum write_kind kind, int fd, const struct iovec *iov, int iovcnt,
                             off_t offset) {
    char path[PATH_MAX];
    initialise();
    if (!active || !synchronous_fd(fd) || !watched_fd(fd, path))
        return real_write_call(kind, fd, iov, iovcnt, offset);
    pthread_mutex_lock(&shadow_lock);
    int appending = (fcntl(fd, F_GETFL) & O_APPEND) != 0;
    if (offset < 0 && !appending) offset = lseek(fd, 0, SEEK_CUR);
    ssize_t written = real_write_call(kind, fd, iov, iovcnt, offset);
    int saved = errno;
    if (written > 0) {
        if (offset < 0) offset = lseek(fd, 0, SEEK_CUR) - written;
        mirror(path, iov, iovcnt, offset, (size_t)written);
    }
    pthread_mutex_unlock(&shadow_lock);
    errno = saved;
    return written;
}

ssize_t write(int fd, const void *buffer, size_t count) {
    struct iovec one = {(void *)buffer, count};
    return checked_write(WRITE, fd, &one, 1, -1);
}

ssize_t pwrite(int fd, const void *buffer, size_t count, off_t offset) {
    struct iovec one = {(void *)buffer, count};
    return checked_write(PWRITE, fd, &one, 1, offset);
}

ssize_t pwrite64(int fd, const void *buffer, size_t count, off_t offset) {
    struct iovec one = {(void *)buffer, count};
    return checked_write(PWRITE64, fd, &one, 1, offset);
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    return checked_write(WRITEV, fd, iov, iovcnt, -1);
}

/* The watched file mapped at `address` (from /proc/self/maps) and the file offset of
 * `address` in it; 0 when the address maps no watched file. */
static int watched_mapping(const void *address, char path[PATH_MAX], off_t *offset) {
    FILE *maps = fopen("/proc/self/maps", "re");
    if (maps == NULL) return 0;
    char line[PATH_MAX + 128];
    int found = 0;
    while (!found && fgets(line, sizeof line, maps) != NULL) {
        unsigned long start, end;
        unsigned long long file_offset;
        int name_at = 0;
        if (sscanf(line, "%lx-%lx %*s %llx %*s %*s %n", &start, &end, &file_offset,
                   &name_at) < 3 ||
            name_at == 0)
            continue;
        if ((unsigned long)address < start || (unsigned long)address >= end) continue;
        char *name = line + name_at;
        name[strcspn(name, "\n")] = '\0';
        if (watched(name)) {
            path_printf(path, "%s", name);
            *offset = (off_t)(file_offset + ((unsigned long)address - start));
            found = 1;
        }
        break;
    }
    fclose(maps);
    return found;
}

int msync(void *address, size_t length, int flags) {
    char path[PATH_MAX], staged[PATH_MAX];
    off_t offset;
    initialise();
    /* MS_ASYNC only schedules the write-back: nothing is durable when it returns. */
    if (!active || !(flags & MS_SYNC) || !watched_mapping(address, path, &offset))
        return real_msync(address, length, flags);
    pthread_mutex_lock(&shadow_lock);
    if (stage(path, offset, (off_t)length, staged) != 0) stage_failed(path);
    int result = real_msync(address, length, flags);
    int saved = errno;
    if (result == 0)
        publish(path, staged);
    else
        real_unlink(staged);
    pthread_mutex_unlock(&shadow_lock);
    errno = saved;
    return result;
}

/* sync / syncfs: every watched file under the root is durable afterwards. */
static char (*pending)[PATH_MAX];
static int pending_count, pending_capacity;

static int collect(const char *path, const struct stat *info, int type, struct FTW *where) {
    (void)info;
    (void)where;
    if (type != FTW_F || !watched(path)) return 0;
    if (pending_count == pending_capacity) {
        int capacity = pending_capacity ? 2 * pending_capacity : 16;
        void *grown = realloc(pending, (size_t)capacity * PATH_MAX);
        if (grown == NULL) return -1;
        pending = grown;
        pending_capacity = capacity;
    }
    path_printf(pending[pending_count++], "%s", path);
    return 0;
}

static int sync_everything(int (*sync_call)(void)) {
    pthread_mutex_lock(&shadow_lock);
    pending_count = 0;
    if (nftw(root, collect, 16, FTW_PHYS) != 0) stage_failed(root);
    char (*staged)[PATH_MAX] = calloc((size_t)pending_count + 1, PATH_MAX);
    if (staged == NULL) stage_failed(root);
    for (int index = 0; index < pending_count; index++)
        if (stage(pending[index], 0, -1, staged[index]) != 0) stage_failed(pending[index]);
    int result = sync_call();
    int saved = errno;
    for (int index = 0; index < pending_count; index++) {
        if (result == 0)
            publish(pending[index], staged[index]);
        else
            real_unlink(staged[index]);
    }
    free(staged);
    pthread_mutex_unlock(&shadow_lock);
    errno = saved;
    return result;
}

static int call_sync(void) {
    real_sync();
    return 0;
}

static __thread int syncfs_fd;
static int call_syncfs(void) { return real_syncfs(syncfs_fd); }

void sync(void) {
    initialise();
    if (!active) {
        real_sync();
        return;
    }
    sync_everything(call_sync);
}

int syncfs(int fd) {
    initialise();
    if (!active) return real_syncfs(fd);
    syncfs_fd = fd;
    return sync_everything(call_syncfs);
}

/* Deleting a watched file deletes its durable state too, so a file created again under
 * the same name starts with nothing synced (a replica that discards itself). */
static void forget(int directory, const char *pathname) {
    char parent[PATH_MAX], resolved[PATH_MAX], path[PATH_MAX], shadow[PATH_MAX];
    const char *slash = strrchr(pathname, '/');
    const char *base = slash ? slash + 1 : pathname;
    if (slash == NULL) {
        snprintf(parent, sizeof parent, ".");
    } else {
        path_printf(parent, "%.*s", (int)(slash - pathname), pathname);
        if (parent[0] == '\0') snprintf(parent, sizeof parent, "/");
    }
    if (parent[0] != '/' && directory != AT_FDCWD) {
        /* Relative to a directory descriptor: resolve that descriptor first. */
        char link[64], at[PATH_MAX];
        snprintf(link, sizeof link, "/proc/self/fd/%d", directory);
        ssize_t length = readlink(link, at, sizeof at - 1);
        if (length <= 0) return;
        at[length] = '\0';
        char joined[PATH_MAX];
        path_printf(joined, "%s/%s", at, parent);
        path_printf(parent, "%s", joined);
    }
    if (realpath(parent, resolved) == NULL) return;
    path_printf(path, "%s/%s", resolved, base);
    if (!watched(path)) return;
    shadow_of(path, shadow);
    real_unlink(shadow);
}

int unlink(const char *pathname) {
    initialise();
    int result = real_unlink(pathname);
    if (result == 0 && active) {
        int saved = errno;
        pthread_mutex_lock(&shadow_lock);
        forget(AT_FDCWD, pathname);
        pthread_mutex_unlock(&shadow_lock);
        errno = saved;
    }
    return result;
}

int unlinkat(int directory, const char *pathname, int flags) {
    initialise();
    int result = real_unlinkat(directory, pathname, flags);
    if (result == 0 && active && !(flags & AT_REMOVEDIR)) {
        int saved = errno;
        pthread_mutex_lock(&shadow_lock);
        forget(directory, pathname);
        pthread_mutex_unlock(&shadow_lock);
        errno = saved;
    }
    return result;
}
