/* arena.c -- size-class chunk pools in the segment.
 *
 * Each class is an array of equal chunks plus one 32-bit holder tag per
 * chunk. The tag IS the allocator's state: 0 means free, anything else names
 * the holder (the app, worker w, or slot s; see CZMP_HOLDER_* in czmp.h).
 *
 *   alloc:   next-fit scan from a shared hint; CAS tag 0 -> holder
 *   free:    CAS tag holder -> 0        (a double or foreign free is refused)
 *   reclaim: CAS tag holder -> 0 for every chunk of a dead holder
 *
 * We chose tags over free lists kept as index rings (the design note's first
 * idea): with one CAS as the only transition, a process killed at any
 * instruction leaves every chunk either free or tagged with its holder, so
 * crash recovery is one reclaim call and needs no ring repair. The cost is a
 * scan when a class is nearly full; the hint keeps the common case O(1).
 *
 * Lazy backing (issue 18): the creator reserves the chunk data only as a
 * sparse range of the tmpfs file (segment.c), so start-up does not allocate
 * the whole pool. The process that allocates a chunk backs the bytes it
 * asked for before it writes them: MADV_POPULATE_WRITE allocates the tmpfs
 * pages and maps them, or fails with EFAULT where a touch would SIGBUS (a
 * full /dev/shm); the chunk is then freed again and the alloc fails with
 * -ENOSPC, which the payload layer turns into SharedMemoryFullError. Pages
 * once backed stay in the file until the segment goes, so the per-process
 * `backed` cache (struct czmp_class_local) only saves the syscall: a process
 * that never saw a chunk re-populates it, which for pages another process
 * backed already only maps them. Readers of a chunk never need to: its
 * writer backed every byte they may read.
 *
 * Bounds: class sizes, counts and addresses come from the process-local copy
 * of the validated layout (struct czmp_class_local), never from the header,
 * so a handle is decoded against numbers no other process can change. The
 * shared hint is only ever used modulo that local count.
 */
#include <errno.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* Bytes populated per madvise call. MADV_POPULATE_WRITE holds the process's
 * mmap lock (read) for the whole range, and a thread that maps or unmaps
 * memory meanwhile (Python's allocator, a thread start) waits for the end:
 * at start-up the ~20 MiB of bookkeeping in one call held the app's threads
 * ~10 ms, a 32 MiB chunk as long (issue 18). In steps, one step at most. */
#define POPULATE_STEP ((uint64_t)1 << 20)

/* MADV_POPULATE_WRITE on [lo, lo + len) in POPULATE_STEP pieces; 0, or -1
 * with errno from the first piece that failed. */
static int populate_write(uintptr_t lo, uint64_t len) {
    while (len > 0) {
        uint64_t n = len < POPULATE_STEP ? len : POPULATE_STEP;
        if (madvise((void *)lo, n, MADV_POPULATE_WRITE) != 0)
            return -1;
        lo += n;
        len -= n;
    }
    return 0;
}

static inline struct czmp_class_local *class_of(czmp_segment_t *seg, uint32_t c) {
    return &seg->classes[c];
}

/* Decode a chunk handle; returns 0 and the class/index, or -EINVAL. */
static int decode(czmp_segment_t *seg, uint64_t h, uint32_t *cls, uint32_t *idx) {
    if (czmp_handle_kind(h) != CZMP_HANDLE_CHUNK)
        return -EINVAL;
    uint32_t c = (uint32_t)((h >> 48) & 0xff), i = (uint32_t)h;
    /* bits 32..47 are unused: a handle with any of them set is not one we
     * made (a corrupt or stale value), so it must not alias a real chunk */
    if (((h >> 32) & 0xffff) != 0 || c >= seg->nclasses || i >= class_of(seg, c)->nchunks)
        return -EINVAL;
    *cls = c;
    *idx = i;
    return 0;
}

static int alloc_in(czmp_segment_t *seg, uint32_t c, uint32_t holder, uint64_t *handle) {
    struct czmp_class_local *ci = class_of(seg, c);
    uint32_t *tags = ci->tags;
    uint32_t n = ci->nchunks;
    uint32_t start = (uint32_t)(czmp_load_relaxed(ci->hint) % n);
    for (uint32_t k = 0; k < n; k++) {
        uint32_t i = start + k < n ? start + k : start + k - n;
        if (czmp_load_relaxed(&tags[i]) != CZMP_HOLDER_FREE)
            continue;
        uint32_t expect = CZMP_HOLDER_FREE;
        /* acq_rel: acquire pairs with the release in czmp_arena_free, so the
         * previous holder's writes are done before we write the chunk. */
        if (czmp_cas(&tags[i], &expect, holder)) {
            czmp_store_relaxed(ci->hint, (uint64_t)(i + 1));  /* a hint only */
            *handle = czmp_handle_chunk(c, i);
            CZMP_FAULT(CZMP_FAULT_ARENA_HELD);
            return 0;
        }
    }
    return -ENOMEM;
}

static uint64_t page_bytes(void) {
    static uint64_t page;  /* racing first calls store the same value: relaxed is enough */
    uint64_t v = czmp_load_relaxed(&page);
    if (!v) {
        long p = sysconf(_SC_PAGESIZE);
        v = p > 0 ? (uint64_t)p : 4096;
        czmp_store_relaxed(&page, v);
    }
    return v;
}

/* Back the first `size` bytes of chunk i of class ci with tmpfs pages.
 * 0 (also on a kernel without MADV_POPULATE_WRITE: the creator then
 * fallocated the whole file, see segment.c), or -ENOSPC when the pages
 * cannot be had (EFAULT: a write would SIGBUS). Nothing is written. */
static int back_chunk(struct czmp_class_local *ci, uint32_t i, uint64_t size) {
    uint64_t page = page_bytes();
    uintptr_t start = (uintptr_t)(ci->data + (uint64_t)i * ci->chunk_size);
    uintptr_t lo = start & ~(uintptr_t)(page - 1);
    uintptr_t hi = (start + size + page - 1) & ~(uintptr_t)(page - 1);
    uint32_t want = (uint32_t)((hi - lo) / page);
    /* relaxed: a hint only -- a stale value costs one redundant madvise */
    if (ci->backed && czmp_load_relaxed(&ci->backed[i]) >= want)
        return 0;
    if (populate_write(lo, hi - lo) != 0 && errno != EINVAL)
        return -ENOSPC;
    if (ci->backed) {
        uint32_t had = czmp_load_relaxed(&ci->backed[i]);
        while (had < want && !czmp_cas(&ci->backed[i], &had, want))
            ;
    }
    return 0;
}

int czmp_arena_alloc(czmp_segment_t *seg, uint64_t size, uint32_t holder, uint64_t *handle) {
    if (holder == CZMP_HOLDER_FREE)
        return -EINVAL;
    int rc = -EFBIG;
    for (uint32_t c = 0; c < seg->nclasses; c++) {
        if (class_of(seg, c)->chunk_size < size)
            continue;
        /* a full class spills into the next larger one */
        rc = alloc_in(seg, c, holder, handle);
        if (rc == 0) {
            if (back_chunk(class_of(seg, c), (uint32_t)*handle, size) == 0)
                return 0;
            /* no page to be had: hand the chunk back (it was never written) */
            czmp_arena_free(seg, *handle, holder);
            return -ENOSPC;
        }
    }
    return rc;
}

int czmp_arena_prefault(czmp_segment_t *seg, uint64_t *cursor, uint64_t max_bytes) {
    const uint64_t meta_done = 1ULL << 63;  /* cursor bit: the bookkeeping is done */
    if (!(*cursor & meta_done) && seg->nclasses) {
        /* first the bookkeeping (slots, records, tags; fallocated at create,
         * so this cannot fail for want of pages): a crash's reap scans every
         * slot and tag, and faulting them in one by one then took ~30 ms */
        populate_write((uintptr_t)seg->base,
                       (uint64_t)(class_of(seg, 0)->data - (char *)seg->base));
        for (uint32_t k = 1; k < seg->nclasses; k++) {
            uintptr_t t = (uintptr_t)class_of(seg, k)->tags & ~(uintptr_t)(page_bytes() - 1);
            populate_write(t, (uint64_t)((uintptr_t)class_of(seg, k)->data - t));
        }
    }
    *cursor |= meta_done;
    uint32_t c = (uint32_t)((*cursor & ~meta_done) >> 32), i = (uint32_t)*cursor;
    uint64_t done = 0;
    for (; c < seg->nclasses; c++, i = 0) {
        struct czmp_class_local *ci = class_of(seg, c);
        for (; i < ci->nchunks; i++) {
            if (done >= max_bytes) {
                *cursor = meta_done | ((uint64_t)c << 32) | i;
                return 1;
            }
            int rc = back_chunk(ci, i, ci->chunk_size);
            if (rc != 0) {
                *cursor = meta_done | ((uint64_t)c << 32) | i;
                return rc;
            }
            done += ci->chunk_size;
        }
    }
    *cursor = meta_done | ((uint64_t)seg->nclasses << 32);
    return 0;
}

void *czmp_arena_ptr(czmp_segment_t *seg, uint64_t handle) {
    uint32_t c, i;
    if (decode(seg, handle, &c, &i) != 0)
        return NULL;
    struct czmp_class_local *ci = class_of(seg, c);
    return ci->data + (uint64_t)i * ci->chunk_size;
}

uint64_t czmp_arena_chunk_size(czmp_segment_t *seg, uint64_t handle) {
    uint32_t c, i;
    return decode(seg, handle, &c, &i) == 0 ? class_of(seg, c)->chunk_size : 0;
}

uint32_t czmp_arena_holder(czmp_segment_t *seg, uint64_t handle) {
    uint32_t c, i;
    if (decode(seg, handle, &c, &i) != 0)
        return 0;
    return czmp_load_acquire(&class_of(seg, c)->tags[i]);
}

int czmp_arena_retag(czmp_segment_t *seg, uint64_t handle, uint32_t from, uint32_t to) {
    uint32_t c, i;
    if (decode(seg, handle, &c, &i) != 0 || from == CZMP_HOLDER_FREE)
        return -EINVAL;
    uint32_t expect = from;
    /* release (in acq_rel): the chunk's bytes are complete before the new
     * holder can see it is theirs */
    return czmp_cas(&class_of(seg, c)->tags[i], &expect, to) ? 0 : -EPERM;
}

int czmp_arena_free(czmp_segment_t *seg, uint64_t handle, uint32_t holder) {
    return czmp_arena_retag(seg, handle, holder, CZMP_HOLDER_FREE);
}

int czmp_arena_reclaim(czmp_segment_t *seg, uint32_t holder) {
    int freed = 0;
    if (holder == CZMP_HOLDER_FREE)
        return 0;
    for (uint32_t c = 0; c < seg->nclasses; c++) {
        struct czmp_class_local *ci = class_of(seg, c);
        uint32_t *tags = ci->tags;
        for (uint32_t i = 0; i < ci->nchunks; i++) {
            uint32_t expect = holder;
            if (czmp_load_relaxed(&tags[i]) == holder &&
                czmp_cas(&tags[i], &expect, CZMP_HOLDER_FREE))
                freed++;
        }
    }
    return freed;
}

int czmp_arena_stats(czmp_segment_t *seg, int cls, czmp_class_stats_t *out) {
    if (cls < 0 || (uint32_t)cls >= seg->nclasses)
        return -EINVAL;
    struct czmp_class_local *ci = class_of(seg, (uint32_t)cls);
    uint32_t *tags = ci->tags;
    uint32_t used = 0;
    for (uint32_t i = 0; i < ci->nchunks; i++)
        used += czmp_load_relaxed(&tags[i]) != CZMP_HOLDER_FREE;
    out->chunk_size = ci->chunk_size;
    out->nchunks = ci->nchunks;
    out->used = used;
    return 0;
}

uint64_t czmp_arena_max_size(czmp_segment_t *seg) {
    uint32_t n = seg->nclasses;
    return n ? class_of(seg, n - 1)->chunk_size : 0;
}
