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
 * Each cell is ONE 64-bit word: (sequence low 32 bits << 32) | value. Packing
 * both into one word is what lets publish, release and repair each be a single
 * CAS, so a repair can never interleave with a half-written cell. */
struct czmp_ring {
    uint64_t tail;        /* producers: CAS to claim a cell; tail - head <= cap */
    uint64_t pad_t[7];
    uint64_t head;        /* consumers: CAS to claim a cell; head <= tail */
    uint64_t pad_h[7];
    uint32_t cap;         /* power of two, fixed at creation */
    uint32_t mask;        /* cap - 1 */
    uint64_t pad_c[7];
    uint64_t cells[];     /* cap words */
};

struct czmp_segment {
    void *base;
    uint64_t size;
    czmp_header_t *hdr;
};

static inline uint64_t czmp_ring_bytes(uint32_t cap) {
    return sizeof(struct czmp_ring) + (uint64_t)cap * sizeof(uint64_t);
}

static inline void *czmp_at(czmp_segment_t *seg, uint64_t off) {
    return (char *)seg->base + off;
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

/* Fault injection: one global load on the hot path, predicted not taken. */
extern int czmp_fault_point;
void czmp_fault_hit(int point);
#define CZMP_FAULT(point)                                                   \
    do {                                                                    \
        if (__builtin_expect(czmp_fault_point == (point), 0))               \
            czmp_fault_hit(point);                                          \
    } while (0)

/* ring.c internals used by slots.c: claim-then-release pops. */
int czmp_ring_claim_one(czmp_ring_t *r, uint64_t *pos, uint64_t *word);
void czmp_ring_release_one(czmp_ring_t *r, uint64_t pos, uint64_t word);

#endif /* CZMP_INTERNAL_H */
