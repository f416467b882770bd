/* slots.c -- the slot state machine, the task queue built from the rings,
 * and worker records.
 *
 *   FREE --app submit--> QUEUED --worker take--> RUNNING(w) --worker finish--> DONE(w)
 *     ^                    |  ^                     |                           |
 *     |               app cancel  \--app requeue--- HELD <--app collect---------/
 *     \---- app release ---+-------------------------/ ^
 *                                                      \-- app reap of dead w: RUNNING(w)/DONE(w)
 *
 * (The app's release of a succeeded slot whose result was inline happens
 * inside its collect call, czmp_results_collect_outcomes_ex: HELD -> FREE
 * there, no separate call.)
 *
 * Chains (issue 15): a child waits in its own states until its parent's
 * worker feeds it, or the app takes it back:
 *
 *   FREE/HELD --app wait--> WAITING --worker w feeding its parent--> FEEDING(w)
 *                            |  ^                                      |   |
 *        app take-back: -> HELD  \---- w's feed failed (no chunk, ----/   |
 *        parent failed, cancel,       no ring room), or reap of dead w    |
 *        nobody fed it (app feeds)                                         |
 *                                            QUEUED <--w: fed chunk in ----/
 *
 * The feeding worker queues the child BEFORE it publishes the parent DONE,
 * so a child is FEEDING(w) only while its parent is RUNNING(w): a crash
 * there is reaped as one (parent re-run or failed, child WAITING again),
 * and the app never has to feed a child on behalf of a dead feeder.
 *
 * Every arrow is one CAS on the slot's state word, and only the process named
 * on an arrow makes it. The app never takes a RUNNING slot from a live worker:
 * it kills the worker first and reaps it (timeouts, cancels of running
 * tasks), so a worker's finish cannot race the app's takeover.
 *
 * Who frees what after a crash:
 *   args chunk    tagged SLOT+i by the app; freed only by czmp_slot_release.
 *   result chunk  tagged WORKER+w while being written, SLOT+i from just before
 *                 DONE; a dead worker's WORKER+w chunks are reclaimed by reap,
 *                 a RUNNING slot's result chunk is dropped by reap.
 *   fed chunk     (a child's copy of its parent's outcome) tagged WORKER+w
 *                 while written, SLOT+child from just before the QUEUED CAS;
 *                 a FEEDING(w) child's is dropped by the reap of w, any
 *                 other only by czmp_slot_release (a retried child re-reads
 *                 it). A WAITING slot never holds one.
 *   continuation  (czmp_slot_t.next) written by the app, read by the worker
 *                 finishing the parent, cleared by czmp_slot_release; the
 *                 generations packed in it make a stale one inert.
 *   ring cells    repaired by czmp_rings_repair (see ring.c).
 *
 * A QUEUED slot's hint is its only way to a worker, so no path may drop one
 * (issue 10.1): a submit that cannot push undoes its own QUEUED CAS and
 * reports the slot as not queued; a purge that popped live hints pushes every
 * one back, however long it has to wait for room (see push_back_all).
 *
 * Everything here indexes shared memory through the process-local geometry
 * of struct czmp_segment (internal.h): slot, worker and function indices
 * are checked against local counts; values read from slots (handles,
 * lengths, priorities) are bounded before use.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

/* A consumer polls before it sleeps: CZMP_SPIN_PAUSE_ROUNDS passes with a
 * pause, then passes with sched_yield() until CZMP_SPIN_NS have gone by.
 * 50 us is about one futex round trip here (~43 us): a steady stream of
 * tasks is picked up without any syscall on either side, and an idle
 * consumer sleeps 50 us after the last task. */
#define CZMP_SPIN_PAUSE_ROUNDS 64
#define CZMP_SPIN_NS 50000
/* How long a spinner's count is believed without renewal: well past one
 * poll, so a preempted spinner costs at most a spurious wake, and short, so
 * pushes right after a spinner was killed wait at most this for a wake. */
#define CZMP_SPIN_LEASE_NS 1000000

czmp_slot_t *czmp_slot(czmp_segment_t *seg, uint32_t idx) {
    return idx < seg->nslots ? seg->slots + idx : NULL;
}

czmp_worker_t *czmp_worker(czmp_segment_t *seg, uint32_t idx) {
    return idx < seg->nworkers ? seg->workers + idx : NULL;
}

czmp_func_t *czmp_func(czmp_segment_t *seg, uint32_t idx) {
    return idx < seg->nfuncs ? seg->funcs + idx : NULL;
}

uint64_t czmp_slot_state(czmp_segment_t *seg, uint32_t idx) {
    czmp_slot_t *s = czmp_slot(seg, idx);
    return s ? czmp_load_acquire(&s->state) : 0;
}

int czmp_slot_cas(czmp_segment_t *seg, uint32_t idx, uint64_t expect, uint64_t desired) {
    czmp_slot_t *s = czmp_slot(seg, idx);
    if (!s)
        return -EINVAL;
    return czmp_cas(&s->state, &expect, desired) ? 0 : -EAGAIN;
}

static inline uint32_t slot_holder(uint32_t idx) { return (uint32_t)CZMP_HOLDER_SLOT_BASE + idx; }
static inline uint32_t worker_holder(uint32_t w) { return (uint32_t)CZMP_HOLDER_WORKER_BASE + w; }

/* Push v on r, waiting while the ring looks full; give up after max_wait_ns
 * (< 0: never). A Vyukov ring can look full with fewer than cap values in
 * it: a push one lap ahead must wait until the consumer that claimed the
 * cell releases it, and that consumer may be preempted between its claim
 * and its release (or dead, until czmp_rings_repair releases the cell). So
 * "full" from a ring sized for every slot is transient, and dropping the
 * value on it loses a hint that nobody else holds. */
static int push_patiently(czmp_ring_t *r, uint32_t v, int64_t max_wait_ns) {
    uint64_t start = 0;
    for (int round = 0;; round++) {
        if (czmp_ring_push(r, v) == 0)
            return 0;
        if (round < 64) {
            czmp_cpu_relax();
            continue;
        }
        uint64_t now = czmp_now_ns();
        if (!start)
            start = now;
        else if (max_wait_ns >= 0 && now - start >= (uint64_t)max_wait_ns)
            return -EAGAIN;
        if (round < 256) {
            sched_yield();
        } else {
            struct timespec ts = {0, 20000};  /* 20 us: a stuck consumer needs a repair */
            nanosleep(&ts, NULL);
        }
    }
}

/* How often a purge that cannot push its hints back repairs the ring itself:
 * a cell held that long is held by a stalled or dead consumer, and the
 * repairer that would free it (the supervisor) may be the very thread that
 * is waiting here. */
#define CZMP_PURGE_REPAIR_NS 5000000

/* Push every hint of vals[0..n) back on ring[prio]. They are the only hints
 * of QUEUED slots, so this waits for room however long it takes (issue 10.1:
 * a purge used to re-push what fit and drop the rest). Room is missing only
 * while a consumer holds a cell between claim and release: a live one
 * releases it within its time slice, a dead or stopped one is released by a
 * ring repair, which we run ourselves every CZMP_PURGE_REPAIR_NS (repair is
 * safe against live processes). Hints our repair recovers for QUEUED slots
 * of this priority that are not in vals yet join it (seen[] marks those in
 * it; vals has room for nslots). Runs without the GIL (callers: the
 * blocking half of submit, repair, reap). */
static void push_back_all(czmp_segment_t *seg, czmp_ring_t *r, int prio, uint32_t *vals,
                          int n, uint8_t *seen) {
    int done = czmp_ring_push_many(r, vals, n);
    uint64_t cookie[2] = {0, 0}, last = 0;
    uint32_t rec[64];
    while (done < n) {
        if (czmp_ring_push(r, vals[done]) == 0) {
            done++;
            continue;
        }
        uint64_t now = czmp_now_ns();
        if (now - last >= CZMP_PURGE_REPAIR_NS) {
            last = now;
            int got = czmp_ring_repair(r, cookie, rec, 64);
            for (int i = 0; i < got; i++) {
                czmp_slot_t *s = czmp_slot(seg, rec[i]);
                if (s && !seen[rec[i]] && czmp_load_relaxed(&s->priority) == (uint32_t)prio &&
                    czmp_state_kind(czmp_load_acquire(&s->state)) == CZMP_SLOT_QUEUED) {
                    seen[rec[i]] = 1;
                    vals[n++] = rec[i];
                }
            }
        }
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
    }
}

/* The app found ring[prio] full of values (tail - head == cap). Rings hold
 * 2 * nslots cells, so a full ring holds stale hints: a cancelled task's hint
 * stays in its ring until a worker drops it, and cancel/resubmit rounds with
 * no worker popping can fill the ring with them. Pop everything, keep the
 * first hint of each slot that is still QUEUED for this priority, push those
 * back (order kept, see push_back_all) and wake workers for them. Returns the
 * number of hints dropped, 0 if it could not allocate (nothing popped).
 * The app is just one more consumer and producer here, so workers may run
 * meanwhile: a hint they miss while it is out of the ring is pushed back
 * and notified. A ring that only LOOKS full (a consumer stalled between its
 * claim and its release) is not purged: popping cannot make room at that
 * cell, and every hint popped would then have nowhere to go. Hints of slot
 * `pushing` are dropped too: the caller is about to push that one. */
static int purge_stale_hints(czmp_segment_t *seg, czmp_ring_t *r, int prio, uint32_t pushing) {
    uint32_t cap = czmp_ring_capacity(r), nslots = seg->nslots;
    uint32_t *vals = malloc((size_t)cap * sizeof *vals);
    uint8_t *seen = calloc(nslots, 1);
    int dropped = 0;
    if (vals && seen) {
        if (pushing < nslots)
            seen[pushing] = 1;
        int got = czmp_ring_pop_many(r, vals, (int)cap), kept = 0;
        for (int i = 0; i < got; i++) {
            czmp_slot_t *s = czmp_slot(seg, vals[i]);
            if (s && !seen[vals[i]] && czmp_load_relaxed(&s->priority) == (uint32_t)prio &&
                czmp_state_kind(czmp_load_acquire(&s->state)) == CZMP_SLOT_QUEUED) {
                seen[vals[i]] = 1;
                vals[kept++] = vals[i];
            }
        }
        CZMP_FAULT(CZMP_FAULT_PURGE_POPPED);
        push_back_all(seg, r, prio, vals, kept, seen);
        if (kept)
            czmp_wake_notify(&seg->hdr->task_wake, kept);
        dropped = got - kept;
    }
    free(vals);
    free(seen);
    return dropped;
}

/* How long the app waits on a task ring that looks full before refusing the
 * task: long enough for a preempted worker to be scheduled again, short
 * enough not to stall add_task visibly (and the GIL is released meanwhile). */
#define CZMP_SUBMIT_WAIT_NS 2000000

/* Push a task hint on ring[prio]. nowait: only try, and set *blocked if the
 * ring has no room. Otherwise purge a ring full of values, then wait up to
 * CZMP_SUBMIT_WAIT_NS for a cell to be released. 0 or -EAGAIN (the hint is
 * not in the ring; nothing else changed). */
static int push_hint(czmp_segment_t *seg, czmp_ring_t *r, int prio, uint32_t idx, int nowait,
                     int *blocked) {
    if (czmp_ring_push(r, idx) == 0)
        return 0;
    if (nowait) {
        *blocked = 1;
        return -EAGAIN;
    }
    CZMP_FAULT(CZMP_FAULT_SUBMIT_WAITING);
    /* purge first: a ring full of stale hints is the common cause, and
     * purging costs microseconds where waiting would cost the whole 2 ms */
    if (czmp_ring_is_full(r) && purge_stale_hints(seg, r, prio, idx) > 0 && czmp_ring_push(r, idx) == 0)
        return 0;
    return push_patiently(r, idx, CZMP_SUBMIT_WAIT_NS);
}

int czmp_tasks_submit_ex(czmp_segment_t *seg, int prio, const uint32_t *idx, int n,
                         int nowait, int *blocked) {
    czmp_ring_t *r = czmp_segment_task_ring(seg, prio);
    if (!r)
        return -EINVAL;
    uint64_t now = czmp_now_ns();
    int done = 0;
    for (; done < n; done++) {
        czmp_slot_t *s = czmp_slot(seg, idx[done]);
        if (!s)
            return done ? done : -EINVAL;
        uint64_t st = czmp_load_acquire(&s->state);
        uint32_t kind = czmp_state_kind(st);
        if (kind != CZMP_SLOT_FREE && kind != CZMP_SLOT_HELD)
            break;
        /* relaxed atomic: workers holding a stale hint read it (take_from)
         * with no ordering to this write; only the value matters */
        czmp_store_relaxed(&s->priority, (uint32_t)prio);
        s->queued_ns = now;
        /* release (CAS): payload and fields above are visible to the worker
         * whose CAS in take_now() acquires this word */
        if (!czmp_cas(&s->state, &st, czmp_state_make(czmp_state_gen(st), 0, CZMP_SLOT_QUEUED)))
            break;
        if (push_hint(seg, r, prio, idx[done], nowait, blocked) != 0) {
            /* no room (nowait, or a consumer stalled mid-pop for 2 ms):
             * undo, so the caller still owns the slot and knows it. If the
             * undo fails a worker took the slot through a stale hint of it
             * (hints are not generations): it is queued after all, and
             * counted so, or the caller would reuse a running slot. */
            uint64_t q = czmp_state_make(czmp_state_gen(st), 0, CZMP_SLOT_QUEUED);
            if (!czmp_cas(&s->state, &q, st))
                done++;
            break;
        }
    }
    if (done)
        czmp_wake_notify_lazy(&seg->hdr->task_wake);
    return done;
}

int czmp_tasks_submit(czmp_segment_t *seg, int prio, const uint32_t *idx, int n) {
    int blocked = 0;
    return czmp_tasks_submit_ex(seg, prio, idx, n, 0, &blocked);
}

/* Claim slot hints from one ring without sleeping. */
static int take_from(czmp_segment_t *seg, czmp_ring_t *r, int prio, uint32_t worker,
                     uint32_t *out, int max) {
    int got = 0;
    uint64_t pos, w;
    while (got < max && czmp_ring_claim_one(r, &pos, &w)) {
        /* a worker dying here leaves the cell unreleased and the slot QUEUED:
         * the ring repair hands the hint back */
        CZMP_FAULT(CZMP_FAULT_RING_POP_CLAIMED);
        uint32_t idx = czmp_ring_word_value(w);
        czmp_slot_t *s = czmp_slot(seg, idx);  /* NULL for a tombstone */
        if (s) {
            uint64_t st = czmp_load_acquire(&s->state);
            /* a hint left in this ring by the slot's previous task (cancelled,
             * then the slot requeued at another priority) must not run the new
             * task ahead of its turn: every QUEUED slot has its own hint in
             * ring[s->priority], so dropping this one loses nothing */
            if (czmp_state_kind(st) == CZMP_SLOT_QUEUED &&
                czmp_load_relaxed(&s->priority) != (uint32_t)prio)
                st = 0;
            while (czmp_state_kind(st) == CZMP_SLOT_QUEUED) {
                uint64_t run = czmp_state_make(czmp_state_gen(st), worker + 1, CZMP_SLOT_RUNNING);
                /* acq_rel: acquires the app's payload; pairs with the CAS in
                 * czmp_tasks_submit */
                if (czmp_cas(&s->state, &st, run)) {
                    s->started_ns = czmp_now_ns();
                    s->worker = worker;
                    out[got++] = idx;
                    CZMP_FAULT(CZMP_FAULT_TAKE_SLOT_CLAIMED);
                    break;
                }
            }
            /* any other state: a stale or duplicate hint; drop it */
        }
        czmp_ring_release_one(r, pos, w);
    }
    return got;
}

static int take_now(czmp_segment_t *seg, uint32_t worker, uint32_t *out, int max) {
    int got = 0;
    for (int p = 0; p < CZMP_NPRIO && got < max; p++)
        got += take_from(seg, czmp_segment_task_ring(seg, p), p, worker, out + got, max - got);
    return got;
}

/* The sleeper side of wake.c's protocol around a "try" function. */
typedef int (*try_fn)(czmp_segment_t *, uint32_t, uint32_t *, int);

/* Poll try() for up to CZMP_SPIN_NS, counted in wk->spinners so producers
 * skip the wake syscall meanwhile. After the first rounds each poll yields
 * the CPU: on a machine with as many workers as cores, a spinning consumer
 * must not take the core from the app thread that is producing its work. */
static int spin(czmp_segment_t *seg, czmp_wake_t *wk, try_fn try, uint32_t arg,
                uint32_t *out, int max, int stop_on_shutdown, int woken) {
    czmp_store_relaxed(&wk->spin_lease_ns, czmp_now_ns() + CZMP_SPIN_LEASE_NS);
    czmp_fetch_add(&wk->spinners, 1);
    /* producers now see us spinning; the lazy wake in flight, if it was the
     * one that woke us, has done its job. Only the woken consumer clears it:
     * a busy consumer coming back to spin (every task, under load) must not,
     * or a woken sleeper still waiting for a CPU gets one more FUTEX_WAKE per
     * task the other consumer takes meanwhile (~1 in 6 submits measured, a
     * syscall each, made with the app's GIL held). */
    if (woken)
        czmp_store_release(&wk->waking, 0);
    uint64_t start = 0;
    int n = 0;
    for (uint32_t i = 0;; i++) {
        n = try(seg, arg, out, max);
        if (n > 0) {
            CZMP_FAULT(CZMP_FAULT_SPIN_FOUND);
            break;
        }
        if (stop_on_shutdown && czmp_load_acquire(&seg->hdr->shutdown))
            break;
        if (i < CZMP_SPIN_PAUSE_ROUNDS) {
            czmp_cpu_relax();
            continue;
        }
        uint64_t now = czmp_now_ns();
        czmp_store_relaxed(&wk->spin_lease_ns, now + CZMP_SPIN_LEASE_NS);
        if (!start)
            start = now;
        else if (now - start > CZMP_SPIN_NS)
            break;
        sched_yield();
    }
    /* Clear the lease before we stop counting as a spinner: a producer that
     * then still sees spinners != 0 (other spinners, or a dead one's count)
     * makes the wake, so we cannot fall asleep unseen. Live spinners renew it
     * on their next poll. Ordered before our re-check by wait_for's fence,
     * and before the baton's re-check by the fence in baton(). */
    czmp_store_relaxed(&wk->spin_lease_ns, 0);
    czmp_fetch_sub(&wk->spinners, 1);
    return n;
}

/* A wake marked in flight (wk->waking) was aimed at a counted sleeper; if
 * that sleeper left without spinning (its futex_wait timed out, or its
 * re-check found the work), nobody clears the mark and every later lazy
 * wake is skipped while others sleep (issue 10.6). So a sleeper clears it
 * on its way into futex_wait and on its way out after a timeout: at worst
 * one extra FUTEX_WAKE. */
static inline void clear_waking(czmp_wake_t *wk) {
    if (czmp_load_relaxed(&wk->waking))
        czmp_store_release(&wk->waking, 0);
}

/* The consumer's half of the lazy wake: producers wake nobody while a
 * consumer spins, so a consumer that leaves with work still queued wakes a
 * sleeper for it. seq_cst fence: our "spinners--" (in spin) is ordered
 * before the re-check of `left`; pairs with the fence in
 * czmp_wake_notify_lazy (producer: push, fence, read spinners). Without it
 * C11 lets the re-check read an old empty ring while the producer reads
 * our old spinner count, and both skip the wake. */
static inline void baton(czmp_wake_t *wk, int (*left)(czmp_segment_t *), czmp_segment_t *seg) {
    czmp_fence_seq_cst();
    if (left(seg))
        czmp_wake_notify_lazy(wk);
}

static int wait_for(czmp_segment_t *seg, czmp_wake_t *wk, try_fn try, uint32_t arg,
                    uint32_t *out, int max, int64_t timeout_ns, int stop_on_shutdown) {
    if (timeout_ns == 0)
        return try(seg, arg, out, max);
    uint64_t deadline = timeout_ns > 0 ? czmp_now_ns() + (uint64_t)timeout_ns : 0;
    for (int woken = 0;; woken = 1) {
        int n = spin(seg, wk, try, arg, out, max, stop_on_shutdown, woken);
        if (n > 0 || (stop_on_shutdown && czmp_load_acquire(&seg->hdr->shutdown)))
            return n;
        CZMP_FAULT(CZMP_FAULT_SPIN_DONE);
        czmp_fetch_add(&wk->sleepers, 1);
        /* seq_cst fence: the sleepers increment above is ordered before the
         * re-check below; pairs with the fence in czmp_wake_notify (waker:
         * push, fence, read sleepers). A seq_cst RMW alone does not order a
         * later acquire load of another word in C11 (it only happens to on
         * x86, where the locked add is a full barrier). */
        czmp_fence_seq_cst();
        uint32_t seq = czmp_load_acquire(&wk->seq);
        n = try(seg, arg, out, max);
        if (n > 0 || (stop_on_shutdown && czmp_load_acquire(&seg->hdr->shutdown))) {
            czmp_fetch_sub(&wk->sleepers, 1);
            /* counted, we may have been a wake's target: every counted
             * sleeper clears `waking` on its way out, however it leaves */
            clear_waking(wk);
            return n;
        }
        int64_t left = -1;
        if (deadline) {
            uint64_t now = czmp_now_ns();
            left = now >= deadline ? 0 : (int64_t)(deadline - now);
        }
        CZMP_FAULT(CZMP_FAULT_SLEEP_CHECKED);
        clear_waking(wk);
        int rc = left == 0 ? -ETIMEDOUT : czmp_wake_wait(wk, seq, left);
        if (rc == -ETIMEDOUT)
            CZMP_FAULT(CZMP_FAULT_SLEEP_TIMED_OUT);
        czmp_fetch_sub(&wk->sleepers, 1);
        if (rc == -ETIMEDOUT) {
            clear_waking(wk);
            return try(seg, arg, out, max);
        }
    }
}

static int tasks_queued(czmp_segment_t *seg) {
    for (int p = 0; p < CZMP_NPRIO; p++)
        if (czmp_ring_size(czmp_segment_task_ring(seg, p)))
            return 1;
    return 0;
}

int czmp_tasks_take(czmp_segment_t *seg, uint32_t worker, uint32_t *out, int max,
                    int64_t timeout_ns) {
    if (worker >= seg->nworkers || max <= 0)
        return -EINVAL;
    int n = wait_for(seg, &seg->hdr->task_wake, take_now, worker, out, max, timeout_ns, 1);
    /* Producers wake nobody while a consumer spins (czmp_wake_notify_lazy);
     * that consumer, now busy, passes the baton if work is left. */
    if (n > 0)
        baton(&seg->hdr->task_wake, tasks_queued, seg);
    return n;
}

int czmp_tasks_submit_inline_ex(czmp_segment_t *seg, int prio, uint32_t idx, uint64_t func_id,
                                uint64_t task_id, const void *args, uint32_t len,
                                int nowait, int *blocked) {
    czmp_slot_t *s = czmp_slot(seg, idx);
    if (!s || prio < 0 || prio >= CZMP_NPRIO)
        return -EINVAL;
    if (len > CZMP_INLINE_ARGS)
        return -EMSGSIZE;
    uint32_t kind = czmp_state_kind(czmp_load_acquire(&s->state));
    if (kind != CZMP_SLOT_FREE && kind != CZMP_SLOT_HELD)
        return 0;
    /* plain writes: the caller owns the slot; czmp_tasks_submit's CAS
     * releases them to the worker */
    s->func_id = func_id;
    s->task_id = task_id;
    s->args_handle = (uint64_t)CZMP_HANDLE_INLINE << 56;
    s->args_len = len;
    if (len)
        memcpy(s->args_inline, args, len);
    return czmp_tasks_submit_ex(seg, prio, &idx, 1, nowait, blocked);
}

int czmp_tasks_submit_inline(czmp_segment_t *seg, int prio, uint32_t idx, uint64_t func_id,
                             uint64_t task_id, const void *args, uint32_t len) {
    int blocked = 0;
    return czmp_tasks_submit_inline_ex(seg, prio, idx, func_id, task_id, args, len, 0, &blocked);
}

int czmp_tasks_take_copy(czmp_segment_t *seg, uint32_t worker, uint32_t *idx, void *buf,
                         uint32_t cap, uint32_t *len, int64_t timeout_ns) {
    int n = czmp_tasks_take(seg, worker, idx, 1, timeout_ns);
    if (n <= 0)
        return n;
    czmp_slot_t *s = czmp_slot(seg, *idx);
    uint32_t alen = s->args_len;
    const void *src = NULL;
    if (czmp_handle_kind(s->args_handle) == CZMP_HANDLE_INLINE) {
        if (alen > CZMP_INLINE_ARGS)
            alen = CZMP_INLINE_ARGS;  /* a corrupt length cannot read past the slot */
        src = s->args_inline;
    } else if (czmp_handle_kind(s->args_handle) == CZMP_HANDLE_CHUNK) {
        uint64_t csize = czmp_arena_chunk_size(seg, s->args_handle);
        if (alen > csize)
            alen = (uint32_t)csize;
        src = czmp_arena_ptr(seg, s->args_handle);
    } else {
        alen = 0;  /* external or none: the caller reads it itself */
    }
    *len = s->args_len;
    if (src && alen)
        memcpy(buf, src, alen < cap ? alen : cap);
    return 1;
}

int czmp_tasks_finish(czmp_segment_t *seg, uint32_t worker, uint32_t idx) {
    czmp_slot_t *s = czmp_slot(seg, idx);
    if (!s || worker >= seg->nworkers)
        return -EINVAL;
    uint64_t st = czmp_load_acquire(&s->state);
    if (czmp_state_kind(st) != CZMP_SLOT_RUNNING || czmp_state_owner(st) != worker + 1)
        return -ESTALE;
    int retagged = czmp_handle_kind(s->result_handle) == CZMP_HANDLE_CHUNK &&
                   czmp_arena_retag(seg, s->result_handle, worker_holder(worker),
                                    slot_holder(idx)) == 0;
    s->finished_ns = czmp_now_ns();
    /* release (CAS): result bytes and fields are visible to the collector's
     * acquiring CAS in collect_now() */
    if (!czmp_cas(&s->state, &st, czmp_state_make(czmp_state_gen(st), worker + 1, CZMP_SLOT_DONE))) {
        if (retagged && czmp_arena_retag(seg, s->result_handle, slot_holder(idx),
                                         worker_holder(worker)) == 0)
            czmp_arena_free(seg, s->result_handle, worker_holder(worker));
        return -ESTALE;
    }
    CZMP_FAULT(CZMP_FAULT_FINISH_DONE);
    /* the result ring holds a cell per slot (twice over), so only a claimed,
     * unreleased cell can make it look full: wait it out rather than drop
     * the only hint of a DONE slot (the app's collector would never see it) */
    push_patiently(czmp_segment_result_ring(seg), idx, -1);
    czmp_wake_notify_lazy(&seg->hdr->result_wake);
    return 0;
}

static int collect_now(czmp_segment_t *seg, uint32_t unused, uint32_t *out, int max) {
    (void)unused;
    czmp_ring_t *r = czmp_segment_result_ring(seg);
    int got = 0;
    uint64_t pos, w;
    while (got < max && czmp_ring_claim_one(r, &pos, &w)) {
        uint32_t idx = czmp_ring_word_value(w);
        czmp_slot_t *s = czmp_slot(seg, idx);
        if (s) {
            uint64_t st = czmp_load_acquire(&s->state);
            if (czmp_state_kind(st) == CZMP_SLOT_DONE &&
                czmp_cas(&s->state, &st, czmp_state_make(czmp_state_gen(st), 0, CZMP_SLOT_HELD)))
                out[got++] = idx;
        }
        czmp_ring_release_one(r, pos, w);
    }
    return got;
}

static int results_queued(czmp_segment_t *seg) {
    return czmp_ring_size(czmp_segment_result_ring(seg)) != 0;
}

int czmp_results_collect(czmp_segment_t *seg, uint32_t *out, int max, int64_t timeout_ns) {
    if (max <= 0)
        return -EINVAL;
    int n = wait_for(seg, &seg->hdr->result_wake, collect_now, 0, out, max, timeout_ns, 1);
    /* the baton, as in czmp_tasks_take (issue 10.7): a help_collect thread
     * counts as a spinner, so a worker's finish meanwhile woke nobody; if
     * results are left when we go, the sleeping collector must hear of it */
    if (n > 0)
        baton(&seg->hdr->result_wake, results_queued, seg);
    return n;
}

/* Free a chunk handle the slot owns, whoever of slot or worker holds it. */
static void drop_chunk(czmp_segment_t *seg, uint32_t idx, uint64_t *handle, uint32_t worker) {
    if (czmp_handle_kind(*handle) == CZMP_HANDLE_CHUNK &&
        czmp_arena_free(seg, *handle, slot_holder(idx)) != 0 && worker != UINT32_MAX)
        czmp_arena_free(seg, *handle, worker_holder(worker));
    *handle = CZMP_HANDLE_NONE;
}

int czmp_slot_release(czmp_segment_t *seg, uint32_t idx, uint64_t expect_state) {
    czmp_slot_t *s = czmp_slot(seg, idx);
    if (!s)
        return -EINVAL;
    uint32_t kind = czmp_state_kind(expect_state);
    if (kind != CZMP_SLOT_HELD && kind != CZMP_SLOT_QUEUED)
        return -EINVAL;
    uint64_t st = expect_state;
    /* HELD -> HELD with the next generation first: from here no stale hint
     * or late CAS can match, and the chunks are ours alone to free. */
    uint64_t held = czmp_state_make(czmp_state_gen(st) + 1, 0, CZMP_SLOT_HELD);
    if (!czmp_cas(&s->state, &st, held))
        return -EAGAIN;
    drop_chunk(seg, idx, &s->args_handle, UINT32_MAX);
    drop_chunk(seg, idx, &s->result_handle, UINT32_MAX);
    drop_chunk(seg, idx, &s->fed_handle, UINT32_MAX);
    s->args_len = s->result_len = 0;
    /* relaxed: a feeder that still reads the old word finds our generation
     * moved (czmp_tasks_feed checks it), so no order is needed here */
    czmp_store_relaxed(&s->next, 0);
    czmp_store_release(&s->state, czmp_state_make(czmp_state_gen(held), 0, CZMP_SLOT_FREE));
    return 0;
}

static int repair_ring(czmp_segment_t *seg, czmp_ring_t *r, uint64_t *cookie, int requeue) {
    uint32_t got[256];
    int total = 0, n;
    do {
        n = czmp_ring_repair(r, cookie, got, 256);
        total += n;
        for (int i = 0; requeue && i < n; i++) {
            czmp_slot_t *s = czmp_slot(seg, got[i]);
            if (s && czmp_state_kind(czmp_load_acquire(&s->state)) == CZMP_SLOT_QUEUED) {
                int prio = (int)(czmp_load_relaxed(&s->priority) & 3), blocked = 0;
                push_hint(seg, czmp_segment_task_ring(seg, prio), prio, got[i], 0, &blocked);
                czmp_wake_notify(&seg->hdr->task_wake, 1);
            }
        }
    } while (n == 256);
    return total;
}

int czmp_rings_repair(czmp_segment_t *seg, uint64_t *cookies) {
    int total = 0;
    for (int p = 0; p < CZMP_NPRIO; p++)
        total += repair_ring(seg, czmp_segment_task_ring(seg, p), cookies + 2 * p, 1);
    /* result hints recovered here are dropped: the slot stays DONE and the
     * reap of its (dead) worker, or the next collect, picks it up */
    total += repair_ring(seg, czmp_segment_result_ring(seg), cookies + 2 * CZMP_NPRIO, 0);
    return total;
}

int czmp_worker_reap(czmp_segment_t *seg, uint32_t worker, uint32_t *running,
                     uint32_t *nrunning, uint32_t *done, uint32_t *ndone, uint64_t *cookies) {
    *nrunning = *ndone = 0;
    if (worker >= seg->nworkers)
        return -EINVAL;
    for (uint32_t i = 0; i < seg->nslots; i++) {
        czmp_slot_t *s = czmp_slot(seg, i);
        uint64_t st = czmp_load_acquire(&s->state);
        if (czmp_state_owner(st) != worker + 1)
            continue;
        uint64_t held = czmp_state_make(czmp_state_gen(st), 0, CZMP_SLOT_HELD);
        if (czmp_state_kind(st) == CZMP_SLOT_RUNNING && czmp_cas(&s->state, &st, held)) {
            /* an external result segment is named by the app's payload code,
             * not by us: leave its handle for the app to unlink */
            if (czmp_handle_kind(s->result_handle) != CZMP_HANDLE_EXTERNAL)
                drop_chunk(seg, i, &s->result_handle, worker);
            s->result_len = 0;
            running[(*nrunning)++] = i;
        } else if (czmp_state_kind(st) == CZMP_SLOT_DONE && czmp_cas(&s->state, &st, held)) {
            done[(*ndone)++] = i;
        } else if (czmp_state_kind(st) == CZMP_SLOT_FEEDING) {
            /* a child it was feeding: back to WAITING, its half-written fed
             * chunk dropped first (tagged WORKER+w or already SLOT+i), so a
             * WAITING slot never holds one. The FEEDING(w) owner keeps
             * everyone else off it meanwhile; its parent, RUNNING(w), is
             * reaped in this same scan and re-run or failed. */
            drop_chunk(seg, i, &s->fed_handle, worker);
            czmp_cas(&s->state, &st, czmp_state_make(czmp_state_gen(st), 0, CZMP_SLOT_WAITING));
        }
    }
    czmp_arena_reclaim(seg, worker_holder(worker));
    czmp_worker_t *wr = czmp_worker(seg, worker);
    czmp_store_relaxed(&wr->current_slot, 0);
    czmp_store_release(&wr->state, CZMP_WORKER_DEAD);
    /* it may have died between being woken and clearing `waking`, which
     * would mute every later lazy wake; clearing it costs at most one
     * spurious wake */
    czmp_store_release(&seg->hdr->task_wake.waking, 0);
    czmp_rings_repair(seg, cookies);
    return 0;
}

/* ---- heartbeat: a native thread in each worker process ---------------- */

static struct {
    pthread_t thread;
    int running;
    czmp_segment_t *seg;          /* whose mapping rec points into */
    int stop;
    czmp_worker_t *rec;
    int64_t period_ns;
    pid_t parent;
} hb;

static void *heartbeat_main(void *arg) {
    (void)arg;
    struct timespec ts = {hb.period_ns / 1000000000LL, hb.period_ns % 1000000000LL};
    while (!czmp_load_acquire(&hb.stop)) {
        czmp_store_relaxed(&hb.rec->heartbeat_ns, czmp_now_ns());
        /* a worker never outlives its app: PDEATHSIG follows the thread
         * that forked us, so also watch for re-parenting ourselves */
        if (hb.parent && getppid() != hb.parent)
            _exit(70);
        /* a futex wait, not nanosleep: czmp_heartbeat_stop wakes it at once
         * (a sleep made every worker's exit wait up to a period, issue 18) */
        syscall(SYS_futex, &hb.stop, FUTEX_WAIT_PRIVATE, 0, &ts, NULL, 0);
    }
    return NULL;
}

int czmp_heartbeat_start(czmp_segment_t *seg, uint32_t worker, int64_t period_ns) {
    czmp_worker_t *rec = czmp_worker(seg, worker);
    if (!rec || period_ns <= 0)
        return -EINVAL;
    if (hb.running)
        return -EBUSY;
    hb.rec = rec;
    hb.seg = seg;
    hb.period_ns = period_ns;
    hb.stop = 0;
    hb.parent = getppid();
    czmp_store_relaxed(&rec->heartbeat_ns, czmp_now_ns());
    int rc = pthread_create(&hb.thread, NULL, heartbeat_main, NULL);
    if (rc != 0)
        return -rc;
    hb.running = 1;
    return 0;
}

void czmp_heartbeat_stop(void) {
    if (!hb.running)
        return;
    czmp_store_release(&hb.stop, 1);
    syscall(SYS_futex, &hb.stop, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    pthread_join(hb.thread, NULL);
    hb.running = 0;
    hb.seg = NULL;
}

void czmp_heartbeat_stop_for(czmp_segment_t *seg) {
    if (hb.running && hb.seg == seg)
        czmp_heartbeat_stop();
}

/* Credit worker w's record for finishing slot s (the record is written by
 * its own worker only; relaxed is enough for statistics). */
static void credit(czmp_worker_t *w, czmp_slot_t *s, uint32_t flags) {
    uint64_t now = czmp_now_ns();
    czmp_store_relaxed(&w->busy_ns, w->busy_ns + (now > s->started_ns ? now - s->started_ns : 0));
    if (flags & CZMP_RESULT_FAILED)
        czmp_store_relaxed(&w->tasks_failed, w->tasks_failed + 1);
    else
        czmp_store_relaxed(&w->tasks_done, w->tasks_done + 1);
    czmp_store_relaxed(&w->current_slot, 0);
}

int czmp_tasks_finish_handle(czmp_segment_t *seg, uint32_t worker, uint32_t idx,
                             uint32_t flags, uint64_t handle, uint32_t len) {
    czmp_slot_t *s = czmp_slot(seg, idx);
    czmp_worker_t *w = czmp_worker(seg, worker);
    if (!s || !w)
        return -EINVAL;
    /* ownership first, then any write: see czmp_tasks_finish_inline */
    uint64_t st = czmp_load_acquire(&s->state);
    if (czmp_state_kind(st) != CZMP_SLOT_RUNNING || czmp_state_owner(st) != worker + 1)
        return -ESTALE;
    s->result_handle = handle;
    s->result_len = len;
    s->result_flags = flags;
    credit(w, s, flags);
    return czmp_tasks_finish(seg, worker, idx);
}

int czmp_tasks_finish_inline(czmp_segment_t *seg, uint32_t worker, uint32_t idx,
                             uint32_t flags, const void *data, uint32_t len) {
    czmp_slot_t *s = czmp_slot(seg, idx);
    czmp_worker_t *w = czmp_worker(seg, worker);
    if (!s || !w)
        return -EINVAL;
    if (len > CZMP_INLINE_RESULT)
        return -EMSGSIZE;
    /* ownership first, then any write (issue 10.11): a slot that is no
     * longer RUNNING for us (finished already, or taken back by the app)
     * may be read or reused by others right now */
    uint64_t st = czmp_load_acquire(&s->state);
    if (czmp_state_kind(st) != CZMP_SLOT_RUNNING || czmp_state_owner(st) != worker + 1)
        return -ESTALE;
    /* plain writes: the slot is RUNNING for us; the DONE CAS in
     * czmp_tasks_finish releases them to the collector */
    if (len)
        memcpy(s->result_inline, data, len);
    s->result_handle = (uint64_t)CZMP_HANDLE_INLINE << 56;
    s->result_len = len;
    s->result_flags = flags;
    CZMP_FAULT(CZMP_FAULT_RESULT_WRITTEN);
    credit(w, s, flags);
    return czmp_tasks_finish(seg, worker, idx);
}

int czmp_results_collect_outcomes(czmp_segment_t *seg, czmp_outcome_t *out, int max,
                                  void *data, uint32_t data_cap, int64_t timeout_ns) {
    return czmp_results_collect_outcomes_ex(seg, out, max, data, data_cap, timeout_ns, 0);
}

int czmp_results_collect_outcomes_ex(czmp_segment_t *seg, czmp_outcome_t *out, int max,
                                     void *data, uint32_t data_cap, int64_t timeout_ns,
                                     uint32_t how) {
    uint32_t idx[256];
    if (max <= 0)
        return -EINVAL;
    int n = czmp_results_collect(seg, idx, max < 256 ? max : 256, timeout_ns);
    uint32_t used = 0;
    for (int i = 0; i < n; i++) {
        czmp_slot_t *s = czmp_slot(seg, idx[i]);
        czmp_outcome_t *o = &out[i];
        o->state = czmp_load_acquire(&s->state);
        o->handle = s->result_handle;
        o->started_ns = s->started_ns;
        o->finished_ns = s->finished_ns;
        o->idx = idx[i];
        o->flags = s->result_flags;
        o->len = s->result_len;
        o->worker = s->worker;
        o->data_off = UINT32_MAX;
        o->error = 0;
        /* the length comes from the worker: bound it by the area it names,
         * so the app never builds a buffer past it (issue 10.3) */
        uint32_t kind = czmp_handle_kind(o->handle);
        uint64_t area = kind == CZMP_HANDLE_INLINE ? CZMP_INLINE_RESULT
                      : kind == CZMP_HANDLE_CHUNK ? czmp_arena_chunk_size(seg, o->handle)
                      : kind == CZMP_HANDLE_EXTERNAL ? UINT32_MAX : 0;
        if (o->len > area) {
            o->error = CZMP_ERESULT;
            o->len = 0;
            continue;
        }
        if (kind == CZMP_HANDLE_INLINE && used + o->len <= data_cap) {
            memcpy((char *)data + used, s->result_inline, o->len);
            o->data_off = used;
            used += o->len;
            /* a success whose result is now copied out: nothing in the slot
             * is needed any more, free it here rather than in a call per
             * slot (the collector's hot path). The state we hold it in is
             * ours (HELD since the collect above): the release cannot fail. */
            if ((how & CZMP_COLLECT_RELEASE_OK) && !(o->flags & CZMP_RESULT_FAILED) &&
                czmp_slot_release(seg, idx[i], o->state) == 0)
                o->state = czmp_load_acquire(&s->state);
        }
    }
    return n;
}

int czmp_tasks_submit_inline_many_ex(czmp_segment_t *seg, int prio, const uint32_t *idx, int n,
                                     uint64_t func_id, const uint64_t *task_ids,
                                     const void *data, const uint32_t *off, const uint32_t *len,
                                     int *written_out, int nowait, int *blocked) {
    *written_out = 0;
    if (prio < 0 || prio >= CZMP_NPRIO || n < 0)
        return -EINVAL;
    for (int i = 0; i < n; i++) {
        if (!czmp_slot(seg, idx[i]))
            return -EINVAL;
        if (len[i] > CZMP_INLINE_ARGS)
            return -EMSGSIZE;
    }
    int written = 0;
    for (; written < n; written++) {
        czmp_slot_t *s = czmp_slot(seg, idx[written]);
        uint32_t kind = czmp_state_kind(czmp_load_acquire(&s->state));
        if (kind != CZMP_SLOT_FREE && kind != CZMP_SLOT_HELD)
            break;
        /* plain writes: the caller owns the slots; czmp_tasks_submit's CAS
         * releases them to the workers */
        s->func_id = func_id;
        s->task_id = task_ids[written];
        s->args_handle = (uint64_t)CZMP_HANDLE_INLINE << 56;
        s->args_len = len[written];
        if (len[written])
            memcpy(s->args_inline, (const char *)data + off[written], len[written]);
    }
    *written_out = written;
    return written ? czmp_tasks_submit_ex(seg, prio, idx, written, nowait, blocked) : 0;
}

int czmp_tasks_submit_inline_many(czmp_segment_t *seg, int prio, const uint32_t *idx, int n,
                                  uint64_t func_id, const uint64_t *task_ids,
                                  const void *data, const uint32_t *off, const uint32_t *len) {
    int written = 0, blocked = 0;
    return czmp_tasks_submit_inline_many_ex(seg, prio, idx, n, func_id, task_ids, data, off, len,
                                            &written, 0, &blocked);
}

/* ---- chains: feeding a waiting child (czmp.h, issue 15) ------------------ */

static inline uint64_t next_make(uint32_t child, uint32_t child_gen, uint32_t parent_gen) {
    return (uint64_t)(child + 1) | ((uint64_t)(child_gen & CZMP_NEXT_GEN_MASK) << 24) |
           ((uint64_t)(parent_gen & CZMP_NEXT_GEN_MASK) << 44);
}

int czmp_slot_set_next(czmp_segment_t *seg, uint32_t parent, uint64_t parent_state,
                       uint32_t child, uint64_t child_state) {
    czmp_slot_t *p = czmp_slot(seg, parent);
    if (!p || !czmp_slot(seg, child) || parent == child ||
        czmp_state_kind(child_state) != CZMP_SLOT_WAITING)
        return -EINVAL;
    /* release: the child's WAITING CAS (and its payload) happen before a
     * feeder can see this word; pairs with the load acquire in
     * czmp_tasks_feed */
    czmp_store_release(&p->next, next_make(child, czmp_state_gen(child_state),
                                           czmp_state_gen(parent_state)));
    return 0;
}

/* Put a child we hold FEEDING(worker) back to WAITING, its fed chunk freed
 * first (whichever of us or the slot it is tagged for). Cannot fail: the
 * FEEDING(worker) word is ours until this store. */
static void unfeed(czmp_segment_t *seg, uint32_t child, czmp_slot_t *c, uint64_t feeding,
                   uint32_t worker) {
    drop_chunk(seg, child, &c->fed_handle, worker);
    czmp_store_release(&c->state, czmp_state_make(czmp_state_gen(feeding), 0, CZMP_SLOT_WAITING));
}

int czmp_tasks_feed(czmp_segment_t *seg, uint32_t worker, uint32_t idx, uint32_t flags,
                    const void *data, uint32_t len) {
    czmp_slot_t *s = czmp_slot(seg, idx);
    if (!s || worker >= seg->nworkers)
        return 0;
    uint64_t st = czmp_load_acquire(&s->state);
    if (czmp_state_kind(st) != CZMP_SLOT_RUNNING || czmp_state_owner(st) != worker + 1)
        return 0;
    /* acquire: pairs with czmp_slot_set_next's release (the child is WAITING
     * with its payload written before we can see its index here) */
    uint64_t nx = czmp_load_acquire(&s->next);
    uint32_t child = (uint32_t)(nx & 0xffffff);
    if (!child || ((nx >> 44) & CZMP_NEXT_GEN_MASK) != (czmp_state_gen(st) & CZMP_NEXT_GEN_MASK))
        return 0;  /* none, or left by an earlier task of this slot */
    child -= 1;
    czmp_slot_t *c = czmp_slot(seg, child);
    if (!c || child == idx)
        return 0;
    uint64_t cst = czmp_load_acquire(&c->state);
    if (czmp_state_kind(cst) != CZMP_SLOT_WAITING ||
        (czmp_state_gen(cst) & CZMP_NEXT_GEN_MASK) != ((nx >> 24) & CZMP_NEXT_GEN_MASK))
        return 0;  /* fed by an earlier attempt of ours, taken back, or reused */
    uint64_t feeding = czmp_state_make(czmp_state_gen(cst), worker + 1, CZMP_SLOT_FEEDING);
    /* acq_rel: one of us and the app's take-back (WAITING -> HELD) wins */
    if (!czmp_cas(&c->state, &cst, feeding))
        return 0;
    uint64_t h;
    int rc = czmp_arena_alloc(seg, (uint64_t)len + 8, worker_holder(worker), &h);
    if (rc != 0) {
        czmp_store_release(&c->state, czmp_state_make(czmp_state_gen(feeding), 0,
                                                      CZMP_SLOT_WAITING));
        return rc;
    }
    char *p = czmp_arena_ptr(seg, h);
    memcpy(p, &len, 4);
    memcpy(p + 4, &flags, 4);
    if (len)
        memcpy(p + 8, data, len);
    /* plain write: the child is FEEDING for us; the QUEUED CAS below
     * releases it to the worker whose take acquires that word */
    c->fed_handle = h;
    czmp_arena_retag(seg, h, worker_holder(worker), slot_holder(child));
    CZMP_FAULT(CZMP_FAULT_FEED_CLAIMED);
    int prio = (int)(czmp_load_relaxed(&c->priority) & 3);
    c->queued_ns = czmp_now_ns();
    uint64_t queued = czmp_state_make(czmp_state_gen(feeding), 0, CZMP_SLOT_QUEUED);
    /* release: fed chunk, handle and queued_ns visible to the worker whose
     * CAS in take_from() acquires this word */
    uint64_t expect = feeding;
    if (!czmp_cas(&c->state, &expect, queued)) {
        unfeed(seg, child, c, feeding, worker);  /* cannot happen: FEEDING(w) is ours */
        return -EAGAIN;
    }
    int blocked = 0;
    if (push_hint(seg, czmp_segment_task_ring(seg, prio), prio, child, 0, &blocked) != 0) {
        /* no room for 2 ms: undo, as czmp_tasks_submit_ex does, unless a
         * worker took it through a stale hint (then it is queued after all) */
        expect = queued;
        if (czmp_cas(&c->state, &expect, feeding)) {
            unfeed(seg, child, c, feeding, worker);
            return -EAGAIN;
        }
    } else {
        czmp_wake_notify_lazy(&seg->hdr->task_wake);
    }
    CZMP_FAULT(CZMP_FAULT_FEED_QUEUED);
    return 1;
}
