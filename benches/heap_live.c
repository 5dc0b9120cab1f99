/* Live heap bytes of a process, for benches that want a count rather than RSS (which moves
 * with what the allocator kept from earlier work). Preloaded into a glibc build of outpost:
 *
 *   gcc -O2 -shared -fPIC -o heap_live.so benches/heap_live.c
 *   HEAP_LIVE_DIR=/some/dir LD_PRELOAD=./heap_live.so outpost serve …
 *
 * Every allocation adds its usable size, every free takes it off; on SIGUSR2 the total is
 * written to $HEAP_LIVE_DIR/live.<pid> (with open/write: nothing in the handler allocates), and
 * the live allocations counted by usable size (8-byte steps) to live.<pid>.hist<n>, n counting
 * the signals: the difference between two of them, divided by the sockets opened in between,
 * is what each socket holds, by size. The static musl build does not load it (mimalloc is
 * linked in). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static long live;
static char path[512];

#define NB 4096
static long hist[NB + 1];
static int dumps;
static void add(void *p) {
    if (!p) return;
    size_t u = malloc_usable_size(p);
    __atomic_fetch_add(&live, (long)u, __ATOMIC_RELAXED);
    __atomic_fetch_add(&hist[u / 8 < NB ? u / 8 : NB], 1, __ATOMIC_RELAXED);
}
static void take(void *p) {
    if (!p) return;
    size_t u = malloc_usable_size(p);
    __atomic_fetch_sub(&live, (long)u, __ATOMIC_RELAXED);
    __atomic_fetch_sub(&hist[u / 8 < NB ? u / 8 : NB], 1, __ATOMIC_RELAXED);
}

void *malloc(size_t n) {
    void *p = __libc_malloc(n);
    add(p);
    return p;
}
void free(void *p) {
    take(p);
    __libc_free(p);
}
void *calloc(size_t a, size_t b) {
    void *p = __libc_calloc(a, b);
    add(p);
    return p;
}
void *realloc(void *old, size_t n) {
    take(old);
    void *p = __libc_realloc(old, n);
    if (p) add(p);
    else if (old && n) add(old); /* failed: the old block stays */
    return p;
}
void *memalign(size_t align, size_t n) {
    void *p = __libc_memalign(align, n);
    add(p);
    return p;
}
void *aligned_alloc(size_t align, size_t n) { return memalign(align, n); }
int posix_memalign(void **out, size_t align, size_t n) {
    void *p = memalign(align, n);
    if (!p) return 12; /* ENOMEM */
    *out = p;
    return 0;
}

static void dump(int sig) {
    (void)sig;
    char line[32];
    int len = snprintf(line, sizeof line, "%ld\n", __atomic_load_n(&live, __ATOMIC_RELAXED));
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        (void)!write(fd, line, (size_t)len);
        close(fd);
    }
    char hp[600];
    snprintf(hp, sizeof hp, "%s.hist%d", path, dumps++);
    fd = open(hp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        for (int i = 0; i <= NB; i++) {
            long c = __atomic_load_n(&hist[i], __ATOMIC_RELAXED);
            if (c) {
                len = snprintf(line, sizeof line, "%d %ld\n", i * 8, c);
                (void)!write(fd, line, (size_t)len);
            }
        }
        close(fd);
    }
}

__attribute__((constructor)) static void init(void) {
    const char *dir = getenv("HEAP_LIVE_DIR");
    snprintf(path, sizeof path, "%s/live.%d", dir ? dir : "/tmp", (int)getpid());
    signal(SIGUSR2, dump);
}
