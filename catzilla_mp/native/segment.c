/* segment.c -- the one shared-memory segment of an engine: create, attach
 * (validating everything), detach, unlink; owner identity; fault points.
 *
 * The layout is computed from a czmp_config_t by one function (layout())
 * used both at creation and, from the header's own counts, at attach: an
 * attaching process recomputes every offset and refuses the segment unless
 * the header agrees byte for byte, so a corrupt or foreign header can never
 * steer a process to an address outside the mapping.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

int czmp_fault_point = CZMP_FAULT_NONE;
static uint64_t fault_countdown;

void czmp_fault_arm(int point, uint64_t countdown) {
    fault_countdown = countdown ? countdown : 1;
    czmp_fault_point = point;
}

void czmp_fault_hit(int point) {
    (void)point;
    if (--fault_countdown == 0)
        raise(SIGKILL);
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

/* Fill every offset of hdr from its counts and class sizes; returns the
 * total size, or 0 if the counts are invalid. */
static uint64_t layout(czmp_header_t *h) {
    if (h->nslots == 0 || h->nslots > (1u << 24) || h->nworkers == 0 ||
        h->nworkers >= 65535 || h->nfuncs == 0 || h->nfuncs > (1u << 20) ||
        h->nclasses > CZMP_MAX_CLASSES)
        return 0;
    h->ring_cap = ring_cap_for(h->nslots);
    h->ring_bytes = align_up(czmp_ring_bytes(h->ring_cap), CZMP_CACHE_LINE);
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
        off = align_up(off + (uint64_t)ci->nchunks * sizeof(uint32_t), 4096);
        ci->data_off = off;
        off = align_up(off + ci->chunk_size * ci->nchunks, 4096);
    }
    return off;
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

static void init_ring(czmp_ring_t *r, uint32_t cap) {
    r->head = r->tail = 0;
    r->cap = cap;
    r->mask = cap - 1;
    for (uint32_t i = 0; i < cap; i++)
        r->cells[i] = (uint64_t)i << 32;  /* seq i, value 0: free for position i */
}

czmp_ring_t *czmp_segment_task_ring(czmp_segment_t *seg, int prio) {
    if (prio < 0 || prio >= CZMP_NPRIO)
        return NULL;
    return czmp_at(seg, seg->hdr->tasks_off + (uint64_t)prio * seg->hdr->ring_bytes);
}

czmp_ring_t *czmp_segment_result_ring(czmp_segment_t *seg) {
    return czmp_at(seg, seg->hdr->results_off);
}

static void init_segment(czmp_segment_t *seg, const czmp_header_t *tmpl) {
    czmp_header_t *h = seg->hdr;
    /* the mapping is fresh from ftruncate: all zero already */
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
    for (int p = 0; p < CZMP_NPRIO; p++)
        init_ring(czmp_segment_task_ring(seg, p), h->ring_cap);
    init_ring(czmp_segment_result_ring(seg), h->ring_cap);
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
    *out = seg;
    return 0;
}

int czmp_segment_create(const char *name, const czmp_config_t *cfg, czmp_segment_t **out) {
    czmp_header_t tmpl;
    header_from_config(&tmpl, cfg);
    uint64_t size = layout(&tmpl);
    if (size == 0)
        return -CZMP_ECONFIG;
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    int rc = 0;
    /* fallocate, unlike ftruncate, makes tmpfs reserve the pages now: a full
     * /dev/shm fails here with ENOSPC instead of SIGBUS on first touch. Only
     * a file system that cannot fallocate at all falls back to ftruncate;
     * falling back on ENOSPC would create exactly the sparse file we avoid. */
    int frc = posix_fallocate(fd, 0, (off_t)size);
    if (frc == EOPNOTSUPP || frc == ENOSYS || frc == EINVAL)
        rc = ftruncate(fd, (off_t)size) == 0 ? 0 : -errno;
    else if (frc != 0)
        rc = -frc;
    if (rc == 0)
        rc = map_fd(fd, size, cfg->populate, out);
    close(fd);
    if (rc != 0) {
        shm_unlink(name);
        return rc;
    }
    init_segment(*out, &tmpl);
    return 0;
}

/* Check a mapped header against its own recomputed layout. */
static int validate(const czmp_header_t *h, uint64_t file_size) {
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
    if (czmp_load_acquire(&h->ready) != 1)
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
    rc = validate((*out)->hdr, (uint64_t)st.st_size);
    if (rc != 0) {
        czmp_segment_detach(*out);
        *out = NULL;
    }
    return rc;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

int czmp_segment_prefault(czmp_segment_t *seg) {
    return madvise(seg->base, seg->size, MADV_POPULATE_WRITE) == 0 ? 0 : -errno;
}

void czmp_segment_detach(czmp_segment_t *seg) {
    if (!seg)
        return;
    munmap(seg->base, seg->size);
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
