/* internal.h -- process-local definitions shared by the C files of the core.
 * Not part of the public API (czmp.h is); nothing here crosses to Python. */
#ifndef CZMP_INTERNAL_H
#define CZMP_INTERNAL_H

#include <signal.h>
#include <stddef.h>
#include <unistd.h>

#include "atomics.h"
#include "czmp.h"

_Static_assert(sizeof(czmp_wake_t) == 64, "czmp_wake_t is one cache line");
_Static_assert(sizeof(czmp_class_info_t) == 64, "czmp_class_info_t is 64 bytes");
_Static_assert(sizeof(czmp_slot_t) == CZMP_SLOT_SIZE, "czmp_slot_t is CZMP_SLOT_SIZE bytes");
_Static_assert(sizeof(czmp_worker_t) == 128, "czmp_worker_t is 128 bytes");
_Static_assert(sizeof(czmp_func_t) == 16, "czmp_func_t is 16 bytes");
_Static_assert(sizeof(czmp_outcome_t) == 56, "czmp_outcome_t is 56 bytes (struct format in process_backend.py)");
_Static_assert(sizeof(czmp_header_t) <= 4096, "the header fits its page");
_Static_assert(offsetof(czmp_header_t, task_wake) % 64 == 0, "wake words on their own lines");

#define CZMP_HEADER_BYTES 4096
#define CZMP_CACHE_LINE 64

/* The ring as laid out in shared memory. head and tail live on separate
 * cache lines so producers and consumers do not false-share.
 * Each cell is ONE 64-bit word: (sequence, 40 bits) << 24 | value (24 bits);
 * see ring.c for the encoding. Packing both into one word is what lets
 * publish, release and repair each be a single CAS, so a repair can never
 * interleave with a half-written cell. cap and mask are written once at
 * creation for readers of the layout (top, tests) and NEVER read by the core
 * after that: it uses its process-local copy (struct czmp_ring below). */
struct czmp_ring_shm {
    uint64_t tail;        /* producers: CAS to claim a cell; tail - head <= cap */
    uint64_t pad_t[7];
    uint64_t head;        /* consumers: CAS to claim a cell; head <= tail */
    uint64_t pad_h[7];
    uint32_t cap;         /* creator, once; informational */
    uint32_t mask;        /* creator, once; informational */
    uint64_t pad_c[7];
    uint64_t cells[];     /* cap words */
};

/* The public czmp_ring_t: a PROCESS-LOCAL view of one ring, filled once at
 * create or validated attach. Every index into cells[] is masked with this
 * copy of mask, so no write into the segment can steer an access outside
 * the ring. */
struct czmp_ring {
    struct czmp_ring_shm *shm;
    uint64_t *cells;
    uint32_t cap;         /* power of two >= 64 */
    uint32_t mask;        /* cap - 1 */
};

/* Process-local copy of one arena class, from the validated layout. */
struct czmp_class_local {
    uint64_t chunk_size;  /* > 0, multiple of 64 */
    uint32_t nchunks;     /* > 0 */
    uint32_t pad;
    uint32_t *tags;       /* nchunks holder tags, inside the mapping */
    char *data;           /* nchunks * chunk_size bytes, inside the mapping */
    uint64_t *hint;       /* the shared next-fit hint (any value is harmless: taken % nchunks) */
    uint32_t *backed;     /* process-local, nchunks entries: pages of each chunk known to be
                             backed by tmpfs (populated by this process); relaxed atomics,
                             only ever raised; NULL (calloc failed): populate every alloc */
};

/* A process's handle on a mapped segment. Everything below `hdr` is the
 * geometry taken ONCE at create or attach (after validation of a private
 * copy of the header) and never re-read from shared memory: a stray or
 * hostile write into the header cannot change a bound, an offset or a
 * divisor this process uses. */
struct czmp_segment {
    void *base;
    uint64_t size;        /* bytes mapped */
    czmp_header_t *hdr;   /* read for shutdown and the wake words only */
    int lock_fd;          /* creator: the shm fd, flock(LOCK_EX) held for life (the janitor's
                             proof that the owner lives, in any PID namespace); else -1 */
    uint32_t nslots, nworkers, nfuncs, nclasses;
    uint32_t ring_cap;
    uint32_t pad;
    czmp_slot_t *slots;
    czmp_worker_t *workers;
    czmp_func_t *funcs;
    struct czmp_ring task_rings[CZMP_NPRIO];
    struct czmp_ring result_ring;
    struct czmp_class_local classes[CZMP_MAX_CLASSES];
};

static inline uint64_t czmp_ring_bytes(uint32_t cap) {
    return sizeof(struct czmp_ring_shm) + (uint64_t)cap * sizeof(uint64_t);
}

static inline void *czmp_at(czmp_segment_t *seg, uint64_t off) {
    return (char *)seg->base + off;
}

/* Bind a process-local ring view to the ring at shm with capacity cap. */
static inline void czmp_ring_bind(struct czmp_ring *r, void *shm, uint32_t cap) {
    r->shm = shm;
    r->cells = r->shm->cells;
    r->cap = cap;
    r->mask = cap - 1;
}

/* Slot state word helpers; layout documented on czmp_slot_t. */
static inline uint32_t czmp_state_kind(uint64_t s) { return (uint32_t)(s & 0xff); }
static inline uint32_t czmp_state_owner(uint64_t s) { return (uint32_t)((s >> 8) & 0xffff); }
static inline uint32_t czmp_state_gen(uint64_t s) { return (uint32_t)(s >> 32); }
static inline uint64_t czmp_state_make(uint32_t gen, uint32_t owner, uint32_t kind) {
    return ((uint64_t)gen << 32) | ((uint64_t)(owner & 0xffff) << 8) | (kind & 0xff);
}

/* Handles. */
static inline uint64_t czmp_handle_chunk(uint32_t cls, uint32_t idx) {
    return ((uint64_t)CZMP_HANDLE_CHUNK << 56) | ((uint64_t)cls << 48) | idx;
}
static inline uint32_t czmp_handle_kind(uint64_t h) { return (uint32_t)(h >> 56); }

/* Fault points (czmp.h, "faults and pauses"): one global load on the hot
 * path, predicted not taken. czmp_fault_armed is a bit mask of armed points,
 * so any number can be armed at once and a disarmed build pays one load and
 * one compare with zero per point passed. */
extern uint64_t czmp_fault_armed;
void czmp_fault_hit(int point);
#define CZMP_FAULT(point)                                                   \
    do {                                                                    \
        if (__builtin_expect(czmp_fault_armed != 0, 0))                     \
            czmp_fault_hit(point);                                          \
    } while (0)

/* ring.c internals used by slots.c: claim-then-release pops. */
int czmp_ring_claim_one(czmp_ring_t *r, uint64_t *pos, uint64_t *word);
void czmp_ring_release_one(czmp_ring_t *r, uint64_t pos, uint64_t word);
static inline uint32_t czmp_ring_word_value(uint64_t w) { return (uint32_t)(w & 0xffffff); }
/* 1 if the ring holds cap claimed positions (tail - head >= cap): full of
 * values, as opposed to blocked by one unreleased cell. */
int czmp_ring_is_full(czmp_ring_t *r);
/* Write an empty ring (all cells free for positions 0..cap-1) at s. */
void czmp_ring_init(struct czmp_ring_shm *s, uint32_t cap);

/* slots.c internals used by segment.c and the cffi glue. */
void czmp_heartbeat_stop_for(czmp_segment_t *seg);
/* The submit calls with a `nowait` mode: instead of purging a full ring or
 * waiting for room, they stop and set *blocked = 1; the count queued so far
 * is returned as usual. The glue (build_native.py) runs this mode with the
 * GIL held and the rest, which may wait, with the GIL released. */
int czmp_tasks_submit_ex(czmp_segment_t *seg, int prio, const uint32_t *idx, int n,
                         int nowait, int *blocked);
int czmp_tasks_submit_inline_ex(czmp_segment_t *seg, int prio, uint32_t idx, uint64_t func_id,
                                uint64_t task_id, const void *args, uint32_t len,
                                int nowait, int *blocked);
int czmp_tasks_submit_inline_many_ex(czmp_segment_t *seg, int prio, const uint32_t *idx, int n,
                                     uint64_t func_id, const uint64_t *task_ids,
                                     const void *data, const uint32_t *off, const uint32_t *len,
                                     int *written, int nowait, int *blocked);

#endif /* CZMP_INTERNAL_H */
