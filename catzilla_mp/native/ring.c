/* ring.c -- bounded lock-free MPMC ring of uint32 values in shared memory.
 *
 * Vyukov's bounded queue (per-cell sequence numbers), changed so that a
 * process killed at any instruction cannot stall it for ever:
 *
 *   cell word = (seq << 32) | value            (seq: low 32 bits of a position)
 *
 *   push at position p:  cell seq == p      -> CAS tail p -> p+1 (claim)
 *                                           -> CAS cell (p, old) -> (p+1, v) (publish)
 *   pop at position p:   cell seq == p+1    -> CAS head p -> p+1 (claim)
 *                                           -> CAS cell (p+1, v) -> (p+cap, 0) (release)
 *
 * Publishing and releasing are CASes on the whole word, not stores, so
 * czmp_ring_repair() can race with a slow-but-alive process and exactly one
 * of them wins: a repaired producer sees its publish fail and retries; a
 * repaired consumer's value is handed to the repairer as well, which is
 * harmless because ring values are hints checked against slot state words.
 *
 * Sequence numbers are truncated to 32 bits in the cell. Two positions that
 * map to the same cell differ by a multiple of cap, and a mismatch is all the
 * algorithm tests for, so truncation only matters if a cell stays untouched
 * for 2^32 positions, which the ring's boundedness makes impossible.
 */
#include <errno.h>

#include "internal.h"

static inline uint32_t cell_seq(uint64_t w) { return (uint32_t)(w >> 32); }
static inline uint32_t cell_val(uint64_t w) { return (uint32_t)w; }
static inline uint64_t cell_make(uint64_t seq, uint32_t v) {
    return ((uint64_t)(uint32_t)seq << 32) | v;
}

uint32_t czmp_ring_capacity(czmp_ring_t *r) { return r->cap; }

uint64_t czmp_ring_size(czmp_ring_t *r) {
    uint64_t head = czmp_load_acquire(&r->head);
    uint64_t tail = czmp_load_acquire(&r->tail);
    return tail > head ? tail - head : 0;
}

/* Claim the cell at the tail for a producer. Returns 1 and the position and
 * the cell's current word, or 0 when the ring is full. */
static int claim_push(czmp_ring_t *r, uint64_t *pos_out, uint64_t *word_out) {
    uint64_t pos = czmp_load_relaxed(&r->tail);
    for (;;) {
        /* acquire: pairs with the consumer's releasing CAS, so the cell is
         * really free before we reuse it. */
        uint64_t w = czmp_load_acquire(&r->cells[pos & r->mask]);
        int32_t dif = (int32_t)(cell_seq(w) - (uint32_t)pos);
        if (dif == 0) {
            if (czmp_cas(&r->tail, &pos, pos + 1)) {
                *pos_out = pos;
                *word_out = w;
                return 1;
            }
            /* pos now holds the current tail; retry there */
        } else if (dif < 0) {
            return 0;  /* the cell one lap back is not released yet: full */
        } else {
            pos = czmp_load_relaxed(&r->tail);
        }
    }
}

int czmp_ring_push(czmp_ring_t *r, uint32_t v) {
    if (v == (uint32_t)CZMP_RING_TOMBSTONE)
        return -EINVAL;
    for (;;) {
        uint64_t pos, w;
        if (!claim_push(r, &pos, &w))
            return -EAGAIN;
        CZMP_FAULT(CZMP_FAULT_RING_PUSH_CLAIMED);
        /* release: the value (and whatever the caller wrote before this
         * call) is visible to the consumer's acquire load in claim_pop. */
        if (czmp_cas(&r->cells[pos & r->mask], &w, cell_make(pos + 1, v)))
            return 0;
        /* a repair tombstoned our claim while we were slow: push again */
    }
}

/* Batches claim a run of contiguous cells with ONE CAS on tail (or head),
 * which is what lets several producers and consumers share a ring at tens of
 * millions of values per second: the contended word is touched once per
 * batch, not once per value. The run is read before the CAS; that is safe
 * because a free cell (seq == pos) or a published one (seq == pos + 1) can
 * only be changed by whoever claims its position, and repair only touches
 * positions already claimed. Each cell is then published/released with its
 * own CAS, exactly as single push/pop do, so repair works unchanged. */
#define CZMP_RUN_MAX 64

/* Claim up to n free cells at the tail. Returns how many (0 if full) and
 * their first position and current words. */
static int claim_push_run(czmp_ring_t *r, int n, uint64_t *pos_out, uint64_t *words) {
    uint64_t pos = czmp_load_relaxed(&r->tail);
    for (;;) {
        int k = 0;
        for (; k < n; k++) {
            /* acquire: pairs with the consumer's releasing CAS */
            uint64_t w = czmp_load_acquire(&r->cells[(pos + (uint64_t)k) & r->mask]);
            if (cell_seq(w) != (uint32_t)(pos + (uint64_t)k))
                break;
            words[k] = w;
        }
        if (k == 0) {
            uint64_t w = czmp_load_acquire(&r->cells[pos & r->mask]);
            if ((int32_t)(cell_seq(w) - (uint32_t)pos) < 0)
                return 0;  /* the cell one lap back is not released yet: full */
            pos = czmp_load_relaxed(&r->tail);  /* another producer moved on */
            continue;
        }
        if (czmp_cas(&r->tail, &pos, pos + (uint64_t)k)) {
            *pos_out = pos;
            return k;
        }
        /* pos now holds the current tail; retry there */
    }
}

int czmp_ring_push_many(czmp_ring_t *r, const uint32_t *vals, int n) {
    uint64_t words[CZMP_RUN_MAX];
    int pushed = 0;
    for (int i = 0; i < n; i++)
        if (vals[i] == (uint32_t)CZMP_RING_TOMBSTONE)
            n = i;  /* refused as by czmp_ring_push: the prefix before it only */
    while (pushed < n) {
        uint64_t pos;
        int want = n - pushed < CZMP_RUN_MAX ? n - pushed : CZMP_RUN_MAX;
        int k = claim_push_run(r, want, &pos, words);
        if (k == 0)
            break;
        CZMP_FAULT(CZMP_FAULT_RING_PUSH_CLAIMED);
        for (int j = 0; j < k; j++) {
            uint64_t p = pos + (uint64_t)j;
            /* release: pairs with the acquire load in claim_pop / claim_one */
            if (!czmp_cas(&r->cells[p & r->mask], &words[j], cell_make(p + 1, vals[pushed + j])) &&
                czmp_ring_push(r, vals[pushed + j]) != 0) {
                /* a repair tombstoned this claim while we were slow and the
                 * ring is full now: report the values pushed so far (a
                 * prefix is promised, so publish nothing after this one) */
                for (int q = j + 1; q < k; q++) {
                    uint64_t pq = pos + (uint64_t)q;
                    czmp_cas(&r->cells[pq & r->mask], &words[q],
                             cell_make(pq + 1, (uint32_t)CZMP_RING_TOMBSTONE));
                }
                return pushed + j;
            }
        }
        pushed += k;
    }
    return pushed;
}

int czmp_ring_claim_one(czmp_ring_t *r, uint64_t *pos_out, uint64_t *word_out) {
    uint64_t pos = czmp_load_relaxed(&r->head);
    for (;;) {
        /* acquire: pairs with the publishing CAS in czmp_ring_push */
        uint64_t w = czmp_load_acquire(&r->cells[pos & r->mask]);
        int32_t dif = (int32_t)(cell_seq(w) - (uint32_t)(pos + 1));
        if (dif == 0) {
            if (czmp_cas(&r->head, &pos, pos + 1)) {
                *pos_out = pos;
                *word_out = w;
                return 1;
            }
        } else if (dif < 0) {
            return 0;  /* not published yet: empty (or a stuck producer) */
        } else {
            pos = czmp_load_relaxed(&r->head);
        }
    }
}

void czmp_ring_release_one(czmp_ring_t *r, uint64_t pos, uint64_t word) {
    /* release: the cell becomes free for the producer one lap later; pairs
     * with the acquire load in claim_push. A failed CAS means a repair
     * released it already; nothing more to do. */
    czmp_cas(&r->cells[pos & r->mask], &word, cell_make(pos + r->cap, 0));
}

int czmp_ring_pop(czmp_ring_t *r, uint32_t *v) {
    uint64_t pos, w;
    while (czmp_ring_claim_one(r, &pos, &w)) {
        CZMP_FAULT(CZMP_FAULT_RING_POP_CLAIMED);
        czmp_ring_release_one(r, pos, w);
        if (cell_val(w) != (uint32_t)CZMP_RING_TOMBSTONE) {
            *v = cell_val(w);
            return 0;
        }
    }
    return -EAGAIN;
}

/* Claim up to n published cells at the head. Returns how many (0 if empty)
 * with their first position and words. */
static int claim_pop_run(czmp_ring_t *r, int n, uint64_t *pos_out, uint64_t *words) {
    uint64_t pos = czmp_load_relaxed(&r->head);
    for (;;) {
        int k = 0;
        for (; k < n; k++) {
            /* acquire: pairs with the publishing CAS in push */
            uint64_t w = czmp_load_acquire(&r->cells[(pos + (uint64_t)k) & r->mask]);
            if (cell_seq(w) != (uint32_t)(pos + (uint64_t)k + 1))
                break;
            words[k] = w;
        }
        if (k == 0) {
            uint64_t w = czmp_load_acquire(&r->cells[pos & r->mask]);
            if ((int32_t)(cell_seq(w) - (uint32_t)(pos + 1)) < 0)
                return 0;  /* not published yet: empty (or a stuck producer) */
            pos = czmp_load_relaxed(&r->head);
            continue;
        }
        if (czmp_cas(&r->head, &pos, pos + (uint64_t)k)) {
            *pos_out = pos;
            return k;
        }
    }
}

int czmp_ring_pop_many(czmp_ring_t *r, uint32_t *vals, int n) {
    uint64_t words[CZMP_RUN_MAX];
    int got = 0;
    while (got < n) {
        uint64_t pos;
        int want = n - got < CZMP_RUN_MAX ? n - got : CZMP_RUN_MAX;
        int k = claim_pop_run(r, want, &pos, words);
        if (k == 0)
            break;
        CZMP_FAULT(CZMP_FAULT_RING_POP_CLAIMED);
        for (int j = 0; j < k; j++) {
            czmp_ring_release_one(r, pos + (uint64_t)j, words[j]);
            if (cell_val(words[j]) != (uint32_t)CZMP_RING_TOMBSTONE)
                vals[got++] = cell_val(words[j]);
        }
    }
    return got;
}

int czmp_ring_repair(czmp_ring_t *r, uint64_t *cookie, uint32_t *recovered, int max) {
    uint64_t head = czmp_load_acquire(&r->head);
    uint64_t tail = czmp_load_acquire(&r->tail);
    uint64_t prev_head = cookie[0], prev_tail = cookie[1];
    uint64_t lo = head >= r->cap ? head - r->cap : 0;
    int n = 0;

    for (uint64_t p = lo; p < tail; p++) {
        uint64_t *cell = &r->cells[p & r->mask];
        uint64_t w = czmp_load_acquire(cell);
        if (p < head) {
            /* consumed position: released cells have seq p+cap (or later) */
            if (cell_seq(w) != (uint32_t)(p + 1) || p >= prev_head)
                continue;
            if (n >= max)
                break;
            if (czmp_cas(cell, &w, cell_make(p + r->cap, 0)) &&
                cell_val(w) != (uint32_t)CZMP_RING_TOMBSTONE)
                recovered[n++] = cell_val(w);
        } else {
            /* claimed by a producer: published cells have seq p+1 */
            if (cell_seq(w) != (uint32_t)p || p >= prev_tail)
                continue;
            czmp_cas(cell, &w, cell_make(p + 1, (uint32_t)CZMP_RING_TOMBSTONE));
        }
    }
    cookie[0] = head;
    cookie[1] = tail;
    return n;
}
