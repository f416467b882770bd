/* atomics.h -- the only file that touches atomics.
 *
 * Every shared word is 32 or 64 bits: on this machine those are lock-free,
 * while 128-bit atomics fall back to libatomic's locks, which do not work
 * across processes. The static_asserts below refuse to build otherwise.
 *
 * Orderings, as used by callers:
 *   load_acquire / store_release  publish data: everything written before the
 *                                 release store is visible after the acquire
 *                                 load that reads it (the partner is named at
 *                                 each call site).
 *   cas                           acq_rel on success, acquire on failure: a
 *                                 successful CAS both publishes what was
 *                                 written before it and sees what the
 *                                 previous writer published.
 *   fence_seq_cst                 the Dekker pattern of wake.c: "I changed X,
 *                                 now I read Y" on both sides.
 *   load_relaxed / store_relaxed  statistics and hints, where a stale value
 *                                 is harmless.
 */
#ifndef CZMP_ATOMICS_H
#define CZMP_ATOMICS_H

#include <stdint.h>

_Static_assert(__atomic_always_lock_free(sizeof(uint64_t), 0), "64-bit atomics must be lock-free");
_Static_assert(__atomic_always_lock_free(sizeof(uint32_t), 0), "32-bit atomics must be lock-free");

#define czmp_load_relaxed(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define czmp_load_acquire(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define czmp_store_relaxed(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define czmp_store_release(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define czmp_fetch_add(p, v) __atomic_fetch_add((p), (v), __ATOMIC_SEQ_CST)
#define czmp_fetch_add_relaxed(p, v) __atomic_fetch_add((p), (v), __ATOMIC_RELAXED)
#define czmp_fetch_sub(p, v) __atomic_fetch_sub((p), (v), __ATOMIC_SEQ_CST)
#define czmp_fence_seq_cst() __atomic_thread_fence(__ATOMIC_SEQ_CST)

/* Strong CAS; on failure *expected receives the current value. */
#define czmp_cas(p, expected, desired)                                     \
    __atomic_compare_exchange_n((p), (expected), (desired), 0,             \
                                __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)

static inline void czmp_cpu_relax(void) { __builtin_ia32_pause(); }

#endif /* CZMP_ATOMICS_H */
