/* segment.c -- the one shared-memory segment of an engine: create, attach
 * (validating everything), detach, unlink; owner identity and liveness;
 * fault points and pauses.
 *
 * The layout is computed from a czmp_config_t by one function (layout())
 * used both at creation and, from the header's own counts, at attach: an
 * attaching process copies the header, recomputes every offset from the
 * copy with overflow-checked arithmetic and refuses the segment unless the
 * copy agrees byte for byte. The validated copy then becomes the process's
 * geometry (struct czmp_segment in internal.h): no later write into the
 * shared header can move a bound, an offset or a divisor this process uses.
 *
 * Memory: only the pages outside the arena's chunk data are allocated at
 * creation (fallocate: a full /dev/shm is ENOSPC here, never SIGBUS later);
 * the chunk data is a sparse range of the file, backed chunk by chunk by
 * whichever process allocates the chunk (arena.c, MADV_POPULATE_WRITE, which
 * fails instead of SIGBUS when /dev/shm is full), and optionally ahead of
 * need by the app's background pre-fault thread (czmp_arena_prefault).
 * Kernels without MADV_POPULATE_WRITE get the whole file fallocated, as
 * before issue 18.
 *
 * Ownership and liveness: the creator keeps the segment's file descriptor
 * open with flock(LOCK_EX) for as long as it has the segment mapped. The
 * lock lives with the open file, not with a pid, so it proves the owner
 * alive from any PID namespace that shares /dev/shm (containers with
 * --ipc=host, pods); segment_janitor.py removes a segment only after taking
 * that lock itself. A janitor can still win the race between our shm_open
 * and our flock; the creator then finds its name gone and starts again.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/futex.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

/* ---- faults and pauses (tests only; czmp.h documents the harness) ---- */

uint64_t czmp_fault_armed;        /* bit p set: point p armed; tests write it, the core reads it */

static struct {
    uint64_t countdown;           /* hits left before the point fires */
    int action;                   /* CZMP_FAULT_KILL / _STOP / _PARK */
    uint32_t gen;                 /* futex word of parked threads; czmp_fault_release bumps it */
    uint32_t parked;              /* threads parked at the point now */
} faults[CZMP_FAULT_NPOINTS];

int czmp_fault_arm_action(int point, uint64_t countdown, int action) {
    if (point <= 0 || point >= CZMP_FAULT_NPOINTS || action < CZMP_FAULT_KILL ||
        action > CZMP_FAULT_PARK)
        return -EINVAL;
    faults[point].action = action;
    __atomic_store_n(&faults[point].countdown, countdown ? countdown : 1, __ATOMIC_RELAXED);
    /* seq_cst: the countdown and action above are set before any thread can
     * see the point armed (czmp_fault_hit reads the mask, then them) */
    __atomic_fetch_or(&czmp_fault_armed, 1ULL << point, __ATOMIC_SEQ_CST);
    return 0;
}

void czmp_fault_arm(int point, uint64_t countdown) {
    if (point == CZMP_FAULT_NONE) {
        __atomic_store_n(&czmp_fault_armed, 0, __ATOMIC_SEQ_CST);
        return;
    }
    czmp_fault_arm_action(point, countdown, CZMP_FAULT_KILL);
}

/* A park nobody releases ends by itself: the test then fails, not hangs. */
#define CZMP_FAULT_PARK_MAX_NS (60ULL * 1000000000ULL)

static void fault_park(int point) {
    uint32_t g = __atomic_load_n(&faults[point].gen, __ATOMIC_ACQUIRE);
    __atomic_fetch_add(&faults[point].parked, 1, __ATOMIC_SEQ_CST);
    uint64_t until = czmp_now_ns() + CZMP_FAULT_PARK_MAX_NS;
    while (__atomic_load_n(&faults[point].gen, __ATOMIC_ACQUIRE) == g && czmp_now_ns() < until) {
        struct timespec ts = {1, 0};
        syscall(SYS_futex, &faults[point].gen, FUTEX_WAIT_PRIVATE, g, &ts, NULL, 0);
    }
    __atomic_fetch_sub(&faults[point].parked, 1, __ATOMIC_SEQ_CST);
}

void czmp_fault_hit(int point) {
    uint64_t bit = 1ULL << point;
    if (!(__atomic_load_n(&czmp_fault_armed, __ATOMIC_ACQUIRE) & bit))
        return;
    if (__atomic_sub_fetch(&faults[point].countdown, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    /* fire once: the point disarms itself, so other threads pass it */
    __atomic_fetch_and(&czmp_fault_armed, ~bit, __ATOMIC_SEQ_CST);
    int saved = errno;
    switch (faults[point].action) {
    case CZMP_FAULT_STOP:
        raise(SIGSTOP);
        break;
    case CZMP_FAULT_PARK:
        fault_park(point);
        break;
    default:
        raise(SIGKILL);
    }
    errno = saved;
}

int czmp_fault_parked(int point) {
    if (point <= 0 || point >= CZMP_FAULT_NPOINTS)
        return 0;
    return (int)__atomic_load_n(&faults[point].parked, __ATOMIC_ACQUIRE);
}

void czmp_fault_release(int point) {
    if (point <= 0 || point >= CZMP_FAULT_NPOINTS)
        return;
    __atomic_fetch_and(&czmp_fault_armed, ~(1ULL << point), __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&faults[point].gen, 1, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, &faults[point].gen, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
}

uint64_t czmp_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

uint64_t czmp_process_start_time(uint32_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%u/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    /* comm (field 2) may hold spaces and parens: fields restart after the
     * last ')'. starttime is field 22, i.e. the 20th after that paren. */
    char *p = strrchr(buf, ')');
    if (!p)
        return 0;
    p++;
    for (int field = 3; field < 22 && p; field++)
        p = strchr(p + 1, ' ');
    return p ? strtoull(p + 1, NULL, 10) : 0;
}

int czmp_process_die_with_parent(uint32_t parent_pid) {
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
        return -errno;
    return (uint32_t)getppid() == parent_pid ? 0 : -ESRCH;
}

/* Largest segment we lay out: far above any machine's /dev/shm, far below
 * where 64-bit offset sums could wrap. */
#define CZMP_MAX_SEGMENT_BYTES (1ULL << 46)

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) & ~(a - 1); }

/* Twice the slots: a slot has at most one live hint, so a ring can only
 * look full when a consumer stalls between claiming and releasing a cell
 * while a whole lap of other values goes by; with cap == nslots one slow
 * collector was enough once every slot was in flight. */
static uint32_t ring_cap_for(uint32_t nslots) {
    uint32_t cap = 64;
    while (cap < 2 * (uint64_t)nslots)
        cap <<= 1;
    return cap;
}

/* off += n * size, refusing any wrap and any total beyond the cap. */
static int grow(uint64_t *off, uint64_t n, uint64_t size) {
    uint64_t bytes;
    if (__builtin_mul_overflow(n, size, &bytes) || __builtin_add_overflow(*off, bytes, off))
        return 0;
    return *off <= CZMP_MAX_SEGMENT_BYTES;
}

/* Fill every offset of hdr from its counts and class sizes; returns the
 * total size, or 0 if the counts are invalid or the sizes overflow
 * (issue 10.4: chunk_size * nchunks used to wrap and pass). */
static uint64_t layout(czmp_header_t *h) {
    if (h->nslots == 0 || h->nslots > CZMP_MAX_SLOTS || h->nworkers == 0 ||
        h->nworkers >= 65535 || h->nfuncs == 0 || h->nfuncs > (1u << 20) ||
        h->nclasses > CZMP_MAX_CLASSES)
        return 0;
    h->ring_cap = ring_cap_for(h->nslots);
    h->ring_bytes = align_up(czmp_ring_bytes(h->ring_cap), CZMP_CACHE_LINE);
    /* the counts above are bounded, so nothing up to the arena can wrap */
    uint64_t off = CZMP_HEADER_BYTES;
    h->tasks_off = off;
    off += CZMP_NPRIO * h->ring_bytes;
    h->results_off = off;
    off += h->ring_bytes;
    h->slots_off = off = align_up(off, CZMP_CACHE_LINE);
    off += (uint64_t)h->nslots * sizeof(czmp_slot_t);
    h->workers_off = off;
    off += (uint64_t)h->nworkers * sizeof(czmp_worker_t);
    h->funcs_off = off;
    off += (uint64_t)h->nfuncs * sizeof(czmp_func_t);
    h->arena_off = off = align_up(off, 4096);
    uint64_t prev = 0;
    for (uint32_t c = 0; c < h->nclasses; c++) {
        czmp_class_info_t *ci = &h->classes[c];
        if (ci->chunk_size == 0 || ci->chunk_size % 64 || ci->chunk_size <= prev ||
            ci->chunk_size > (1ULL << 40) || ci->nchunks == 0)
            return 0;
        prev = ci->chunk_size;
        ci->tags_off = off;
        if (!grow(&off, ci->nchunks, sizeof(uint32_t)))
            return 0;
        ci->data_off = off = align_up(off, 4096);
        if (!grow(&off, ci->nchunks, ci->chunk_size))
            return 0;
        off = align_up(off, 4096);
    }
    return off <= CZMP_MAX_SEGMENT_BYTES ? off : 0;
}

static void header_from_config(czmp_header_t *h, const czmp_config_t *cfg) {
    memset(h, 0, sizeof *h);
    h->nslots = cfg->nslots;
    h->nworkers = cfg->nworkers;
    h->nfuncs = cfg->nfuncs;
    h->nclasses = cfg->nclasses;
    for (uint32_t c = 0; c < cfg->nclasses && c < CZMP_MAX_CLASSES; c++) {
        h->classes[c].chunk_size = cfg->class_size[c];
        h->classes[c].nchunks = cfg->class_count[c];
    }
}

uint64_t czmp_segment_size(const czmp_config_t *cfg) {
    czmp_header_t h;
    header_from_config(&h, cfg);
    return layout(&h);
}

czmp_ring_t *czmp_segment_task_ring(czmp_segment_t *seg, int prio) {
    if (prio < 0 || prio >= CZMP_NPRIO)
        return NULL;
    return &seg->task_rings[prio];
}

czmp_ring_t *czmp_segment_result_ring(czmp_segment_t *seg) { return &seg->result_ring; }

/* Take the geometry of a validated header (a private copy, never the shared
 * one) into the process-local handle. */
static void adopt(czmp_segment_t *seg, const czmp_header_t *h) {
    seg->nslots = h->nslots;
    seg->nworkers = h->nworkers;
    seg->nfuncs = h->nfuncs;
    seg->nclasses = h->nclasses;
    seg->ring_cap = h->ring_cap;
    seg->slots = czmp_at(seg, h->slots_off);
    seg->workers = czmp_at(seg, h->workers_off);
    seg->funcs = czmp_at(seg, h->funcs_off);
    for (int p = 0; p < CZMP_NPRIO; p++)
        czmp_ring_bind(&seg->task_rings[p], czmp_at(seg, h->tasks_off + (uint64_t)p * h->ring_bytes),
                       h->ring_cap);
    czmp_ring_bind(&seg->result_ring, czmp_at(seg, h->results_off), h->ring_cap);
    for (uint32_t c = 0; c < h->nclasses; c++) {
        struct czmp_class_local *cl = &seg->classes[c];
        cl->chunk_size = h->classes[c].chunk_size;
        cl->nchunks = h->classes[c].nchunks;
        cl->tags = czmp_at(seg, h->classes[c].tags_off);
        cl->data = czmp_at(seg, h->classes[c].data_off);
        cl->hint = &seg->hdr->classes[c].hint;
        /* NULL on failure is allowed: arena.c then populates on every alloc */
        cl->backed = calloc(cl->nchunks, sizeof *cl->backed);
    }
}

void czmp_segment_layout(czmp_segment_t *seg, czmp_layout_t *out) {
    out->total_size = seg->size;
    out->nslots = seg->nslots;
    out->nworkers = seg->nworkers;
    out->nfuncs = seg->nfuncs;
    out->nclasses = seg->nclasses;
    out->ring_cap = seg->ring_cap;
    out->pad = 0;
}

static void init_segment(czmp_segment_t *seg, const czmp_header_t *tmpl) {
    czmp_header_t *h = seg->hdr;
    /* the mapping is fresh from fallocate: all zero already */
    memcpy(h, tmpl, sizeof *h);
    h->magic_lo = CZMP_MAGIC_LO;
    h->magic_hi = CZMP_MAGIC_HI;
    h->version = CZMP_LAYOUT_VERSION;
    h->header_size = sizeof(czmp_header_t);
    h->total_size = seg->size;
    h->owner_uid = (uint32_t)getuid();
    h->owner_pid = (uint32_t)getpid();
    h->owner_start = czmp_process_start_time((uint32_t)getpid());
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    h->created_ns = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
    adopt(seg, tmpl);
    for (int p = 0; p < CZMP_NPRIO; p++)
        czmp_ring_init(seg->task_rings[p].shm, tmpl->ring_cap);
    czmp_ring_init(seg->result_ring.shm, tmpl->ring_cap);
    /* release: attachers check ready with an acquire load before trusting
     * anything else in the header */
    czmp_store_release(&h->ready, 1);
}

static int map_fd(int fd, uint64_t size, int populate, czmp_segment_t **out) {
    int flags = MAP_SHARED | (populate ? MAP_POPULATE : 0);
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, flags, fd, 0);
    if (base == MAP_FAILED)
        return -errno;
    czmp_segment_t *seg = calloc(1, sizeof *seg);
    if (!seg) {
        munmap(base, size);
        return -ENOMEM;
    }
    seg->base = base;
    seg->size = size;
    seg->hdr = base;
    seg->lock_fd = -1;
    *out = seg;
    return 0;
}

/* 1 if /dev/shm/<name> is still the file open on fd. */
static int name_is_fd(const char *name, int fd) {
    char path[512];
    struct stat a, b;
    if (snprintf(path, sizeof path, "/dev/shm/%s", name[0] == '/' ? name + 1 : name) >=
        (int)sizeof path)
        return 1;  /* cannot check a name this long: trust it, as before */
    if (fstat(fd, &a) != 0 || stat(path, &b) != 0)
        return 0;
    return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

/* Create the file and take its owner lock. 0 and *fd_out, or -errno. */
static int create_locked(const char *name, int *fd_out) {
    for (int attempt = 0; attempt < 8; attempt++) {
        int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0)
            return -errno;
        /* blocking: a janitor that opened the name before our lock holds it
         * only while it unlinks */
        if (flock(fd, LOCK_EX) != 0) {
            int rc = -errno;
            close(fd);
            shm_unlink(name);
            return rc;
        }
        /* a janitor (of another PID namespace: ours would have seen us in
         * /proc) took the lock before us and removed the name: start again */
        if (name_is_fd(name, fd)) {
            *fd_out = fd;
            return 0;
        }
        close(fd);
    }
    return -EAGAIN;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* posix_fallocate [off, off + len), or ftruncate to off + len where the file
 * system cannot fallocate at all. 0 or -errno (-ENOSPC: /dev/shm is full). */
static int fallocate_or_truncate(int fd, uint64_t off, uint64_t len) {
    /* fallocate, unlike ftruncate, makes tmpfs reserve the pages now: a full
     * /dev/shm fails here with ENOSPC instead of SIGBUS on first touch. Only
     * a file system that cannot fallocate at all falls back to ftruncate;
     * falling back on ENOSPC would create exactly the sparse file we avoid. */
    int frc = posix_fallocate(fd, (off_t)off, (off_t)len);
    if (frc == EOPNOTSUPP || frc == ENOSYS || frc == EINVAL) {
        struct stat st;
        if (fstat(fd, &st) != 0)
            return -errno;
        if ((uint64_t)st.st_size >= off + len)
            return 0;
        return ftruncate(fd, (off_t)(off + len)) == 0 ? 0 : -errno;
    }
    return -frc;
}

/* Size the file: every page outside the arena's chunk data (header, rings,
 * slots, worker records, function table, each class's tags) is allocated
 * now; the chunk data stays a sparse range, backed chunk by chunk on first
 * alloc (arena.c, issue 18: fallocating a 500 MiB pool took ~0.15 s of the
 * start-up, and its pages stayed allocated whether used or not). */
static int reserve(int fd, const czmp_header_t *h, uint64_t size) {
    uint64_t eager = h->nclasses ? h->classes[0].data_off : size;
    /* a pool that does not fit what /dev/shm has free now is refused here,
     * as when it was fallocated whole: memory_pool_mb stays a promise made
     * at start-up, not a failure found on some later payload */
    struct statvfs vfs;
    if (fstatvfs(fd, &vfs) == 0 && vfs.f_bavail &&
        (uint64_t)vfs.f_bavail * vfs.f_frsize < size)
        return -ENOSPC;
    int rc = fallocate_or_truncate(fd, 0, eager);
    if (rc == 0 && ftruncate(fd, (off_t)size) != 0)
        rc = -errno;
    for (uint32_t c = 1; rc == 0 && c < h->nclasses; c++)
        rc = fallocate_or_truncate(fd, h->classes[c].tags_off,
                                   h->classes[c].data_off - h->classes[c].tags_off);
    return rc;
}

int czmp_segment_create(const char *name, const czmp_config_t *cfg, czmp_segment_t **out) {
    czmp_header_t tmpl;
    header_from_config(&tmpl, cfg);
    uint64_t size = layout(&tmpl);
    if (size == 0)
        return -CZMP_ECONFIG;
    int fd = -1;
    int rc = create_locked(name, &fd);
    if (rc != 0)
        return rc;
    rc = reserve(fd, &tmpl, size);
    if (rc == 0)
        rc = map_fd(fd, size, cfg->populate, out);
    /* a kernel without MADV_POPULATE_WRITE (before 5.14) cannot back chunks
     * on first use without risking SIGBUS: allocate the whole pool now */
    if (rc == 0 &&
        madvise((*out)->base, 4096, MADV_POPULATE_WRITE) != 0 && errno == EINVAL) {
        rc = fallocate_or_truncate(fd, 0, size);
        if (rc != 0) {
            munmap((*out)->base, size);
            free(*out);
        }
    }
    if (rc != 0) {
        shm_unlink(name);
        close(fd);
        return rc;
    }
    (*out)->lock_fd = fd;  /* the owner lock, held until czmp_segment_detach */
    init_segment(*out, &tmpl);
    return 0;
}

/* Check a private copy of a header against its own recomputed layout. */
static int validate(const czmp_header_t *h, uint32_t ready, uint64_t file_size) {
    if (file_size < CZMP_HEADER_BYTES)
        return -CZMP_ETRUNC;
    if (h->magic_lo != CZMP_MAGIC_LO || h->magic_hi != CZMP_MAGIC_HI)
        return -CZMP_EMAGIC;
    if (h->version != CZMP_LAYOUT_VERSION || h->header_size != sizeof(czmp_header_t))
        return -CZMP_EVERSION;
    if (h->owner_uid != (uint32_t)getuid())
        return -CZMP_EOWNER;
    if (h->total_size > file_size)
        return -CZMP_ETRUNC;
    czmp_header_t re;
    memcpy(&re, h, sizeof re);
    uint64_t size = layout(&re);
    if (size == 0 || size != h->total_size || re.tasks_off != h->tasks_off ||
        re.results_off != h->results_off || re.slots_off != h->slots_off ||
        re.workers_off != h->workers_off || re.funcs_off != h->funcs_off ||
        re.arena_off != h->arena_off || re.ring_cap != h->ring_cap ||
        re.ring_bytes != h->ring_bytes)
        return -CZMP_ELAYOUT;
    for (uint32_t c = 0; c < h->nclasses; c++)
        if (re.classes[c].tags_off != h->classes[c].tags_off ||
            re.classes[c].data_off != h->classes[c].data_off)
            return -CZMP_ELAYOUT;
    if (ready != 1)
        return -CZMP_ELAYOUT;
    return 0;
}

int czmp_segment_attach(const char *name, czmp_segment_t **out) {
    int fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct stat st;
    int rc = fstat(fd, &st) == 0 ? 0 : -errno;
    if (rc == 0 && st.st_uid != getuid())
        rc = -CZMP_EOWNER;
    if (rc == 0 && (uint64_t)st.st_size < CZMP_HEADER_BYTES)
        rc = -CZMP_ETRUNC;
    if (rc == 0)
        rc = map_fd(fd, (uint64_t)st.st_size, 0, out);
    close(fd);
    if (rc != 0)
        return rc;
    /* acquire: pairs with the creator's release of ready in init_segment;
     * then validate and adopt a private copy, so that nothing written into
     * the shared header after this point changes what we checked */
    uint32_t ready = czmp_load_acquire(&(*out)->hdr->ready);
    czmp_header_t copy;
    memcpy(&copy, (*out)->hdr, sizeof copy);
    rc = validate(&copy, ready, (uint64_t)st.st_size);
    if (rc != 0) {
        czmp_segment_detach(*out);
        *out = NULL;
        return rc;
    }
    adopt(*out, &copy);
    return 0;
}

int czmp_segment_prefault(czmp_segment_t *seg) {
    return madvise(seg->base, seg->size, MADV_POPULATE_WRITE) == 0 ? 0 : -errno;
}

/* Bytes unmapped per munmap call by czmp_segment_detach. Tearing down the
 * page tables of a backed 500 MiB pool takes ~0.1-0.2 s, and the process's
 * mmap lock is held meanwhile: every thread start and exit of the app waits
 * for it (a thread started after an engine's shutdown waited ~90 ms). In
 * steps, such a thread waits for one step only (issue 18). */
#define DETACH_STEP ((size_t)4 << 20)

void czmp_segment_detach(czmp_segment_t *seg) {
    if (!seg)
        return;
    /* the heartbeat thread writes into this mapping: join it first
     * (issue 10.10; a worker whose serve() raised never stopped it) */
    czmp_heartbeat_stop_for(seg);
    /* from the end: each step trims the one mapping, no split in the middle */
    size_t left = seg->size;
    while (left > DETACH_STEP) {
        left -= DETACH_STEP;
        munmap((char *)seg->base + left, DETACH_STEP);
    }
    munmap(seg->base, left);
    for (uint32_t c = 0; c < seg->nclasses; c++)
        free(seg->classes[c].backed);
    if (seg->lock_fd >= 0)
        close(seg->lock_fd);  /* releases the owner lock */
    free(seg);
}

int czmp_segment_unlink(const char *name) {
    return shm_unlink(name) == 0 ? 0 : -errno;
}

czmp_header_t *czmp_segment_header(czmp_segment_t *seg) { return seg->hdr; }
void *czmp_segment_base(czmp_segment_t *seg) { return seg->base; }

void czmp_segment_shutdown(czmp_segment_t *seg) {
    /* release: pairs with the acquire load in czmp_tasks_take */
    czmp_store_release(&seg->hdr->shutdown, 1);
    czmp_fetch_add(&seg->hdr->task_wake.seq, 1);
    czmp_wake_notify(&seg->hdr->task_wake, 0);
    czmp_wake_notify(&seg->hdr->result_wake, 0);
}
