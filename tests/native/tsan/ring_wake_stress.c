/* ring_wake_stress.c -- the C core's rings, slots and wake words under
 * ThreadSanitizer: producers, consumers and a collector as threads of ONE
 * process over one segment (TSan cannot see across processes; threads share
 * the mapping the same way processes do).
 *
 * Phase 1, raw ring: RING_THREADS threads each push and pop values on one
 * ring (push_many/pop_many and single push/pop mixed); every value pushed is
 * popped exactly once (checked by sums and counts).
 *
 * Phase 2, task path: PRODUCERS app threads own disjoint slots and submit
 * them (czmp_tasks_submit_inline, four priorities); CONSUMERS worker threads
 * take (czmp_tasks_take_copy, sleeping on the task wake word when idle) and
 * finish (czmp_tasks_finish_inline); one collector thread collects outcomes
 * (sleeping on the result wake word), checks each result and releases the
 * slot. Work arrives in bursts with pauses, so consumers go to sleep and
 * must be woken: the lazy-wake and baton paths run, not only spinning.
 * A supervisor thread repairs the rings every millisecond meanwhile, and
 * worker 0's heartbeat thread runs. A watchdog fails the run if it makes no progress for 30 s (a lost wake-up
 * would show as that).
 *
 *   ring_wake_stress [TASKS]      exit 0 ok, 1 wrong count/result, 2 stalled
 *
 * Built and run by run_tsan.sh (gcc -fsanitize=thread with the core's .c
 * files); any TSan report makes the process exit non-zero (halt_on_error).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define NSLOTS 64
#define PRODUCERS 2
#define CONSUMERS 3
#define RING_THREADS 4
#define RING_VALUES 20000   /* per ring thread */

static czmp_segment_t *seg;
static long total_tasks = 20000;
static long collected;            /* collector thread only; read by main after join */
static long progress;             /* atomic: tasks collected, for the watchdog */
static int stop_all;              /* atomic */
static int bad;                   /* atomic: first error seen */

static void fail(const char *what) {
    fprintf(stderr, "ring_wake_stress: %s\n", what);
    __atomic_store_n(&bad, 1, __ATOMIC_SEQ_CST);
}

/* ---- phase 1: one ring, many threads ------------------------------------- */

static uint64_t ring_sum_in, ring_sum_out, ring_n_out;

static void *ring_thread(void *arg) {
    long id = (long)arg;
    czmp_ring_t *r = czmp_segment_task_ring(seg, 3);
    uint32_t vals[8], out[8];
    uint64_t sin = 0, sout = 0;
    const uint64_t all = (uint64_t)RING_THREADS * RING_VALUES;
    uint32_t next = (uint32_t)(id * RING_VALUES) + 1;
    uint32_t end = next + RING_VALUES;
    /* values pushed by one thread are popped by any: run until all are out */
    while (next < end || __atomic_load_n(&ring_n_out, __ATOMIC_ACQUIRE) < all) {
        if (next < end) {
            int k = 0;
            for (; k < 8 && next + (uint32_t)k < end; k++)
                vals[k] = next + (uint32_t)k;
            int pushed = (id & 1) ? czmp_ring_push_many(r, vals, k)
                                  : (czmp_ring_push(r, vals[0]) == 0);
            for (int j = 0; j < pushed; j++)
                sin += vals[j];
            next += (uint32_t)pushed;
        }
        int got = (id & 2) ? czmp_ring_pop_many(r, out, 8) : (czmp_ring_pop(r, out) == 0);
        for (int j = 0; j < got; j++)
            sout += out[j];
        if (got)
            __atomic_fetch_add(&ring_n_out, (uint64_t)got, __ATOMIC_SEQ_CST);
        else
            sched_yield();
    }
    __atomic_fetch_add(&ring_sum_in, sin, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&ring_sum_out, sout, __ATOMIC_SEQ_CST);
    return NULL;
}

/* ---- phase 2: the task path ---------------------------------------------- */

static void *producer(void *arg) {
    long id = (long)arg;
    long quota = total_tasks / PRODUCERS, done = 0;
    uint32_t prio = 0;
    while (done < quota && !__atomic_load_n(&stop_all, __ATOMIC_ACQUIRE)) {
        int burst = 0;
        for (uint32_t i = (uint32_t)id; i < NSLOTS && done < quota; i += PRODUCERS) {
            if (czmp_state_kind(czmp_slot_state(seg, i)) != CZMP_SLOT_FREE)
                continue;
            uint64_t task_id = ((uint64_t)id << 40) | (uint64_t)done;
            int rc = czmp_tasks_submit_inline(seg, (int)(prio++ & 3), i, 1, task_id,
                                              &task_id, sizeof task_id);
            if (rc == 1) {
                done++;
                burst++;
            } else if (rc < 0) {
                fail("submit failed");
            }
        }
        /* pauses between bursts let consumers fall asleep, so wakes matter */
        if (burst == 0 || (done & 63) == 0) {
            struct timespec ts = {0, (done & 127) == 0 ? 2000000 : 20000};
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

static void *consumer(void *arg) {
    uint32_t worker = (uint32_t)(long)arg;
    while (!__atomic_load_n(&stop_all, __ATOMIC_ACQUIRE)) {
        uint32_t idx, len;
        uint64_t task_id = 0;
        int n = czmp_tasks_take_copy(seg, worker, &idx, &task_id, sizeof task_id, &len,
                                     200000000);
        if (n < 0)
            fail("take failed");
        if (n <= 0)
            continue;
        uint64_t result = task_id * 2 + 1;
        if (czmp_tasks_finish_inline(seg, worker, idx, 0, &result, sizeof result) != 0)
            fail("finish refused");
    }
    return NULL;
}

static void *collector(void *arg) {
    (void)arg;
    czmp_outcome_t out[32];
    uint64_t data[32];
    while (collected < total_tasks && !__atomic_load_n(&stop_all, __ATOMIC_ACQUIRE)) {
        int n = czmp_results_collect_outcomes(seg, out, 32, data, sizeof data, 200000000);
        for (int i = 0; i < n; i++) {
            czmp_slot_t *s = czmp_slot(seg, out[i].idx);
            uint64_t res;
            if (out[i].data_off == UINT32_MAX || out[i].len != sizeof res) {
                fail("outcome without its inline result");
                continue;
            }
            memcpy(&res, (char *)data + out[i].data_off, sizeof res);
            if (res != s->task_id * 2 + 1)
                fail("wrong result");
            if (czmp_slot_release(seg, out[i].idx, out[i].state) != 0)
                fail("release refused");
            collected++;
            __atomic_fetch_add(&progress, 1, __ATOMIC_RELAXED);
        }
    }
    return NULL;
}

/* The supervisor's tick, much faster than the engine's 1 s: repairs race
 * live producers and consumers, as they may (ring.c: a repaired live
 * claim fails its CAS and retries; a recovered hint is a harmless duplicate). */
static void *supervisor(void *arg) {
    (void)arg;
    uint64_t cookies[2 * (CZMP_NPRIO + 1)] = {0};
    struct timespec ts = {0, 1000000};
    while (!__atomic_load_n(&stop_all, __ATOMIC_ACQUIRE)) {
        czmp_rings_repair(seg, cookies);
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static void *watchdog(void *arg) {
    (void)arg;
    long last = -1;
    int still = 0;
    while (!__atomic_load_n(&stop_all, __ATOMIC_ACQUIRE)) {
        sleep(1);
        long now = __atomic_load_n(&progress, __ATOMIC_RELAXED);
        still = now == last ? still + 1 : 0;
        last = now;
        if (still >= 30) {
            fprintf(stderr, "ring_wake_stress: no progress for 30 s at %ld tasks (lost wake-up?)\n", now);
            for (uint32_t i = 0; i < NSLOTS; i++) {
                uint64_t st = czmp_slot_state(seg, i);
                if (czmp_state_kind(st) != CZMP_SLOT_FREE)
                    fprintf(stderr, "  slot %u: kind %u owner %u gen %u prio %u\n", i,
                            czmp_state_kind(st), czmp_state_owner(st), czmp_state_gen(st),
                            czmp_slot(seg, i)->priority);
            }
            for (int p = 0; p < CZMP_NPRIO; p++)
                fprintf(stderr, "  task ring %d: %llu cells in use\n", p,
                        (unsigned long long)czmp_ring_size(czmp_segment_task_ring(seg, p)));
            fprintf(stderr, "  result ring: %llu cells in use\n",
                    (unsigned long long)czmp_ring_size(czmp_segment_result_ring(seg)));
            _exit(2);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1)
        total_tasks = atol(argv[1]);
    total_tasks -= total_tasks % PRODUCERS;  /* each producer submits an equal share */
    char name[64];
    snprintf(name, sizeof name, "/czmp-tsan-%d", (int)getpid());
    czmp_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.nslots = NSLOTS;
    cfg.nworkers = CONSUMERS;
    cfg.nfuncs = 1;
    int rc = czmp_segment_create(name, &cfg, &seg);
    if (rc != 0) {
        fprintf(stderr, "create: %d\n", rc);
        return 1;
    }
    czmp_segment_unlink(name);  /* the mapping stays; nothing is left behind */

    pthread_t t[16];
    for (long i = 0; i < RING_THREADS; i++)
        pthread_create(&t[i], NULL, ring_thread, (void *)i);
    for (int i = 0; i < RING_THREADS; i++)
        pthread_join(t[i], NULL);
    if (ring_sum_in != ring_sum_out || ring_n_out != (uint64_t)RING_THREADS * RING_VALUES) {
        fprintf(stderr, "ring: pushed sum %llu, popped sum %llu, popped %llu values\n",
                (unsigned long long)ring_sum_in, (unsigned long long)ring_sum_out,
                (unsigned long long)ring_n_out);
        return 1;
    }

    pthread_t wd, sup, col, prod[PRODUCERS], cons[CONSUMERS];
    pthread_create(&wd, NULL, watchdog, NULL);
    pthread_create(&sup, NULL, supervisor, NULL);
    if (czmp_heartbeat_start(seg, 0, 1000000) != 0)
        fail("heartbeat");
    pthread_create(&col, NULL, collector, NULL);
    for (long i = 0; i < CONSUMERS; i++)
        pthread_create(&cons[i], NULL, consumer, (void *)i);
    for (long i = 0; i < PRODUCERS; i++)
        pthread_create(&prod[i], NULL, producer, (void *)i);
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(prod[i], NULL);
    pthread_join(col, NULL);
    __atomic_store_n(&stop_all, 1, __ATOMIC_RELEASE);
    czmp_segment_shutdown(seg);
    for (int i = 0; i < CONSUMERS; i++)
        pthread_join(cons[i], NULL);
    pthread_join(wd, NULL);
    pthread_join(sup, NULL);
    czmp_heartbeat_stop();
    czmp_segment_detach(seg);
    if (__atomic_load_n(&bad, __ATOMIC_SEQ_CST) || collected != total_tasks) {
        fprintf(stderr, "tasks: %ld submitted, %ld collected\n", total_tasks, collected);
        return 1;
    }
    printf("ring: %d values through %d threads; tasks: %ld through %d consumers\n",
           RING_THREADS * RING_VALUES, RING_THREADS, collected, CONSUMERS);
    return 0;
}
