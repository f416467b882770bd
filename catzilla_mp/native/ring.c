/* ring.c -- bounded lock-free MPMC ring of 24-bit values in shared memory.
 *
 * Vyukov's bounded queue (per-cell sequence numbers), changed so that a
 * process killed or stalled at any instruction cannot stall it for ever:
 *
 *   cell word = seq (40 bits) << 24 | value (24 bits)
 *
 *   free for position P       seq = P mod 2^40,     value = P >> 40 (mod 2^24)
 *   published at position P   seq = P+1 mod 2^40,   value = v (<= CZMP_RING_VALUE_MAX)
 *   tombstone at position P   seq = P+1 mod 2^40,   value = CZMP_RING_TOMBSTONE
 *
 *   push at position p:  cell == free(p)    -> CAS tail p -> p+1 (claim)
 *                                           -> CAS cell free(p) -> published(p, v)
 *   pop at position p:   cell seq == p+1    -> CAS head p -> p+1 (claim)
 *                                           -> CAS cell published(p, v) -> free(p+cap)
 *
 * Publishing and releasing are CASes on the whole word, not stores, so
 * czmp_ring_repair() can race with a slow-but-alive process and exactly one
 * of them wins: a repaired producer sees its publish fail and retries; a
 * repaired consumer's value is handed to the repairer as well, which is
 * harmless because ring values are hints checked against slot state words.
 *
 * Why a free word carries the position's high bits (issue 10.5): a producer
 * stalled between its claim and its publish holds free(p) as the expected
 * word of its CAS. A repair tombstones the claim and the cell goes round;
 * with 32-bit sequences and value 0 in every free cell, the word free(p)
 * came back exactly 2^32 positions later, the stale CAS succeeded, and the
 * ring was wedged for ever. Now free(P) spells all 64 bits of P, so it never
 * recurs and a stale publish can never succeed. A stale RELEASE (a consumer
 * stalled past two repairs) expects published(p, v), which recurs only if
 * the same value is published in the same cell 2^40 positions later: a
 * consumer stalled for 2^40 ring operations (six hours at 50 M/s, the
 * benchmark's top speed; weeks at an engine's rates). That bound is the
 * price of 24-bit values; it is documented rather than closed.
 *
 * Every index into cells[] is masked with the process-local mask (struct
 * czmp_ring in internal.h), never one read from shared memory; head and tail
 * are read from shared memory, so every loop over them is bounded by cap.
 */
#include <errno.h>

#include "internal.h"

#define SEQ_BITS 40
#define SEQ_MASK ((1ULL << SEQ_BITS) - 1)
#define VAL_MASK 0xffffffULL

static inline uint64_t cell_seq(uint64_t w) { return w >> 24; }
static inline uint32_t cell_val(uint64_t w) { return (uint32_t)(w & VAL_MASK); }
/* a word with sequence `seq` (mod 2^40) and value v (24 bits) */
static inline uint64_t cell_make(uint64_t seq, uint64_t v) {
    return ((seq & SEQ_MASK) << 24) | (v & VAL_MASK);
}
static inline uint64_t cell_free(uint64_t pos) { return cell_make(pos, pos >> SEQ_BITS); }
/* seq - pos as a signed 40-bit difference: 0 is "mine", < 0 "a lap behind" */
static inline int64_t seq_dif(uint64_t seq, uint64_t pos) {
    return (int64_t)(((seq - pos) & SEQ_MASK) << 24) >> 24;
}

uint32_t czmp_ring_capacity(czmp_ring_t *r) { return r->cap; }

void *czmp_ring_shared(czmp_ring_t *r) { return r->shm; }

uint64_t czmp_ring_size(czmp_ring_t *r) {
    uint64_t head = czmp_load_acquire(&r->shm->head);
    uint64_t tail = czmp_load_acquire(&r->shm->tail);
    return tail > head ? tail - head : 0;
}

int czmp_ring_is_full(czmp_ring_t *r) {
    uint64_t head = czmp_load_acquire(&r->shm->head);
    uint64_t tail = czmp_load_acquire(&r->shm->tail);
    return tail >= head && tail - head >= r->cap;
}

/* Claim the cell at the tail for a producer. Returns 1 and the position and
 * the cell's current word, or 0 when the ring is full (or corrupt: a cell
 * ahead of a tail that does not move, which only a foreign write makes). */
static int claim_push(czmp_ring_t *r, uint64_t *pos_out, uint64_t *word_out) {
    uint64_t pos = czmp_load_relaxed(&r->shm->tail);
    for (;;) {
        /* acquire: pairs with the consumer's releasing CAS, so the cell is
         * really free before we reuse it. */
        uint64_t w = czmp_load_acquire(&r->cells[pos & r->mask]);
        int64_t dif = seq_dif(cell_seq(w), pos);
        if (dif == 0) {
            if (czmp_cas(&r->shm->tail, &pos, pos + 1)) {
                *pos_out = pos;
                *word_out = w;
                return 1;
            }
            /* pos now holds the current tail; retry there */
        } else if (dif < 0) {
            return 0;  /* the cell one lap back is not released yet: full */
        } else {
            /* the cell is ahead: another producer claimed pos and published
             * (its tail CAS precedes its publish, and our acquire load of the
             * cell makes that CAS visible), so the tail has moved on. If it
             * has not, the ring was written by someone else: report full
             * rather than spin for ever. */
            uint64_t now = czmp_load_relaxed(&r->shm->tail);
            if (now == pos)
                return 0;
            pos = now;
        }
    }
}

int czmp_ring_push(czmp_ring_t *r, uint32_t v) {
    if (v > (uint32_t)CZMP_RING_VALUE_MAX)
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
 * because a free cell or a published one can only be changed by whoever
 * claims its position, and repair only touches positions already claimed.
 * Each cell is then published/released with its own CAS, exactly as single
 * push/pop do, so repair works unchanged. */
#define CZMP_RUN_MAX 64

/* Claim up to n free cells at the tail. Returns how many (0 if full) and
 * their first position and current words. */
static int claim_push_run(czmp_ring_t *r, int n, uint64_t *pos_out, uint64_t *words) {
    uint64_t pos = czmp_load_relaxed(&r->shm->tail);
    for (;;) {
        int k = 0;
        for (; k < n; k++) {
            /* acquire: pairs with the consumer's releasing CAS */
            uint64_t w = czmp_load_acquire(&r->cells[(pos + (uint64_t)k) & r->mask]);
            if (w != cell_free(pos + (uint64_t)k))
                break;
            words[k] = w;
        }
        if (k == 0) {
            uint64_t w = czmp_load_acquire(&r->cells[pos & r->mask]);
            if (seq_dif(cell_seq(w), pos) <= 0 && w != cell_free(pos))
                return 0;  /* the cell one lap back is not released yet: full */
            uint64_t now = czmp_load_relaxed(&r->shm->tail);
            if (now == pos && w != cell_free(pos))
                return 0;  /* ahead of a tail that does not move: corrupt (see claim_push) */
            pos = now;     /* another producer moved on */
            continue;
        }
        if (czmp_cas(&r->shm->tail, &pos, pos + (uint64_t)k)) {
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
        if (vals[i] > (uint32_t)CZMP_RING_VALUE_MAX)
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
    uint64_t pos = czmp_load_relaxed(&r->shm->head);
    for (;;) {
        /* acquire: pairs with the publishing CAS in czmp_ring_push */
        uint64_t w = czmp_load_acquire(&r->cells[pos & r->mask]);
        int64_t dif = seq_dif(cell_seq(w), pos + 1);
        if (dif == 0) {
            if (czmp_cas(&r->shm->head, &pos, pos + 1)) {
                *pos_out = pos;
                *word_out = w;
                return 1;
            }
        } else if (dif < 0) {
            return 0;  /* not published yet: empty (or a stuck producer) */
        } else {
            /* released for a later lap: the consumer that did it moved the
             * head first (see claim_push); a head that does not move means
             * a foreign write: report empty rather than spin */
            uint64_t now = czmp_load_relaxed(&r->shm->head);
            if (now == pos)
                return 0;
            pos = now;
        }
    }
}

void czmp_ring_release_one(czmp_ring_t *r, uint64_t pos, uint64_t word) {
    /* release: the cell becomes free for the producer one lap later; pairs
     * with the acquire load in claim_push. A failed CAS means a repair
     * released it already; nothing more to do. */
    czmp_cas(&r->cells[pos & r->mask], &word, cell_free(pos + r->cap));
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
    uint64_t pos = czmp_load_relaxed(&r->shm->head);
    for (;;) {
        int k = 0;
        for (; k < n; k++) {
            /* acquire: pairs with the publishing CAS in push */
            uint64_t w = czmp_load_acquire(&r->cells[(pos + (uint64_t)k) & r->mask]);
            if (cell_seq(w) != ((pos + (uint64_t)k + 1) & SEQ_MASK))
                break;
            words[k] = w;
        }
        if (k == 0) {
            uint64_t w = czmp_load_acquire(&r->cells[pos & r->mask]);
            if (seq_dif(cell_seq(w), pos + 1) < 0)
                return 0;  /* not published yet: empty (or a stuck producer) */
            uint64_t now = czmp_load_relaxed(&r->shm->head);
            if (now == pos)
                return 0;  /* a head that does not move: corrupt (see claim_one) */
            pos = now;
            continue;
        }
        if (czmp_cas(&r->shm->head, &pos, pos + (uint64_t)k)) {
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
    uint64_t head = czmp_load_acquire(&r->shm->head);
    uint64_t tail = czmp_load_acquire(&r->shm->tail);
    uint64_t prev_head = cookie[0], prev_tail = cookie[1];
    uint64_t lo = head >= r->cap ? head - r->cap : 0;
    int n = 0;
    /* a sane ring has lo <= head <= tail <= head + cap; shared words out of
     * that shape (a foreign write) bound the scan to 2 * cap cells */
    if (tail < lo || tail - lo > 2 * (uint64_t)r->cap)
        tail = lo + 2 * (uint64_t)r->cap;

    for (uint64_t p = lo; p < tail; p++) {
        uint64_t *cell = &r->cells[p & r->mask];
        uint64_t w = czmp_load_acquire(cell);
        if (p < head) {
            /* consumed position: released cells are free(p + cap) (or later) */
            if (cell_seq(w) != ((p + 1) & SEQ_MASK) || p >= prev_head)
                continue;
            if (n >= max)
                break;
            if (czmp_cas(cell, &w, cell_free(p + r->cap)) &&
                cell_val(w) != (uint32_t)CZMP_RING_TOMBSTONE)
                recovered[n++] = cell_val(w);
        } else {
            /* claimed by a producer: published cells have seq p+1 */
            if (w != cell_free(p) || p >= prev_tail)
                continue;
            czmp_cas(cell, &w, cell_make(p + 1, (uint32_t)CZMP_RING_TOMBSTONE));
        }
    }
    cookie[0] = head;
    cookie[1] = tail;
    return n;
}

void czmp_ring_init(struct czmp_ring_shm *s, uint32_t cap) {
    s->head = s->tail = 0;
    s->cap = cap;
    s->mask = cap - 1;
    for (uint32_t i = 0; i < cap; i++)
        s->cells[i] = cell_free(i);
}

int czmp_ring_debug_seek(czmp_ring_t *r, uint64_t pos) {
    uint64_t head = czmp_load_acquire(&r->shm->head);
    uint64_t tail = czmp_load_acquire(&r->shm->tail);
    if (head != tail)
        return -EBUSY;
    for (uint32_t i = 0; i < r->cap; i++) {
        uint64_t p = pos + i;
        czmp_store_release(&r->cells[p & r->mask], cell_free(p));
    }
    czmp_store_release(&r->shm->head, pos);
    czmp_store_release(&r->shm->tail, pos);
    return 0;
}
