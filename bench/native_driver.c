/* native_driver.c -- C-level benchmarks of the native core (bench/native.py
 * compiles this with the core's own sources and runs it).
 *
 *   native_driver mpmc <segname> <producers> <consumers> <items> <batch>
 *       items through one task ring by forked producer and consumer
 *       processes (batch 1: czmp_ring_push/pop; else push_many/pop_many);
 *       prints "items seconds"
 *   native_driver arena <segname> <size> <iterations>
 *       czmp_arena_alloc + czmp_arena_free pairs; prints "ns_per_pair"
 *   native_driver wake <segname> <round_trips> <gap_us>
 *       one process submits a task to a sleeping worker process, which
 *       finishes it; the first waits for the result. gap_us between rounds
 *       lets the worker fall asleep. Prints the round trips in us, sorted.
 *
 * The segment is unlinked right after creation: the mapping lives on in the
 * forked children, and nothing is left in /dev/shm whatever happens.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "czmp.h"

static double now_s(void) { return (double)czmp_now_ns() / 1e9; }

static czmp_segment_t *make(const char *name, uint32_t nslots, uint64_t csize, uint32_t ccount) {
    czmp_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.nslots = nslots;
    cfg.nworkers = 4;
    cfg.nfuncs = 1;
    cfg.nclasses = csize ? 1 : 0;
    cfg.class_size[0] = csize;
    cfg.class_count[0] = ccount;
    cfg.populate = 1;
    czmp_segment_t *seg = NULL;
    int rc = czmp_segment_create(name, &cfg, &seg);
    if (rc != 0) {
        fprintf(stderr, "create %s: %d\n", name, rc);
        exit(2);
    }
    czmp_segment_unlink(name);
    return seg;
}

/* Shared between the forked processes: a start flag and the pop count. */
struct shared {
    volatile uint32_t go;
    uint64_t popped;
};

static int bench_mpmc(const char *name, int np, int nc, uint64_t items, int batch) {
    czmp_segment_t *seg = make(name, 4096, 0, 0);
    czmp_ring_t *r = czmp_segment_task_ring(seg, 0);
    struct shared *sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    uint64_t per = items / (uint64_t)np;
    items = per * (uint64_t)np;
    pid_t kids[64];
    int nk = 0;
    for (int p = 0; p < np; p++) {
        pid_t pid = fork();
        if (pid == 0) {
            uint32_t vals[256];
            while (!__atomic_load_n(&sh->go, __ATOMIC_ACQUIRE))
                ;
            for (uint64_t i = 0; i < per;) {
                int k = 1;
                if (batch == 1) {
                    k = czmp_ring_push(r, (uint32_t)i & 0xffffff) == 0;
                } else {
                    k = (int)(per - i < (uint64_t)batch ? per - i : (uint64_t)batch);
                    for (int j = 0; j < k; j++)
                        vals[j] = (uint32_t)(i + j) & 0xffffff;  /* ring values are 24 bits */
                    k = czmp_ring_push_many(r, vals, k);
                }
                i += (uint64_t)k;
                if (k == 0)
                    sched_yield();  /* full: 4 processes share 2 cores, let a consumer run */
            }
            _exit(0);
        }
        kids[nk++] = pid;
    }
    for (int c = 0; c < nc; c++) {
        pid_t pid = fork();
        if (pid == 0) {
            uint32_t vals[256];
            while (!__atomic_load_n(&sh->go, __ATOMIC_ACQUIRE))
                ;
            for (;;) {
                int got = batch == 1 ? (czmp_ring_pop(r, vals) == 0) : czmp_ring_pop_many(r, vals, batch);
                if (got > 0) {
                    if (__atomic_add_fetch(&sh->popped, (uint64_t)got, __ATOMIC_RELAXED) >= items)
                        break;
                } else if (__atomic_load_n(&sh->popped, __ATOMIC_RELAXED) >= items) {
                    break;
                } else {
                    sched_yield();  /* empty: let a producer run, as a worker's spin does */
                }
            }
            _exit(0);
        }
        kids[nk++] = pid;
    }
    usleep(50000);  /* let every child reach the start line */
    double t0 = now_s();
    __atomic_store_n(&sh->go, 1, __ATOMIC_RELEASE);
    int status, bad = 0;
    for (int i = 0; i < nk; i++) {
        waitpid(kids[i], &status, 0);
        bad |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    }
    double dt = now_s() - t0;
    printf("%llu %.6f\n", (unsigned long long)items, dt);
    czmp_segment_detach(seg);
    return bad;
}

static int bench_arena(const char *name, uint64_t size, uint64_t iters) {
    czmp_segment_t *seg = make(name, 64, size < 64 ? 64 : (size + 63) / 64 * 64, 256);
    uint64_t h[8];
    /* a few chunks held throughout, as in a running engine */
    for (int i = 0; i < 8; i++)
        czmp_arena_alloc(seg, size, CZMP_HOLDER_APP, &h[i]);
    uint64_t t0 = czmp_now_ns();
    for (uint64_t i = 0; i < iters; i++) {
        uint64_t x;
        if (czmp_arena_alloc(seg, size, CZMP_HOLDER_APP, &x) != 0 ||
            czmp_arena_free(seg, x, CZMP_HOLDER_APP) != 0)
            return 1;
    }
    double ns = (double)(czmp_now_ns() - t0) / (double)iters;
    printf("%.2f\n", ns);
    czmp_segment_detach(seg);
    return 0;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int bench_wake(const char *name, int rounds, int gap_us) {
    czmp_segment_t *seg = make(name, 64, 0, 0);
    pid_t pid = fork();
    if (pid == 0) {
        uint32_t idx;
        /* the worker sleeps in take (after its short spin) between rounds */
        while (czmp_tasks_take(seg, 0, &idx, 1, -1) > 0)
            czmp_tasks_finish(seg, 0, idx);
        _exit(0);
    }
    uint64_t *rt = calloc((size_t)rounds, sizeof *rt);
    for (int i = 0; i < rounds; i++) {
        usleep((useconds_t)gap_us);
        uint32_t idx = 0, got;
        uint64_t t0 = czmp_now_ns();
        czmp_tasks_submit(seg, 2, &idx, 1);
        if (czmp_results_collect(seg, &got, 1, 5000000000LL) != 1) {
            fprintf(stderr, "no answer\n");
            kill(pid, SIGKILL);
            return 1;
        }
        rt[i] = czmp_now_ns() - t0;
        czmp_slot_release(seg, idx, czmp_slot_state(seg, idx));
    }
    czmp_segment_shutdown(seg);
    int status;
    waitpid(pid, &status, 0);
    qsort(rt, (size_t)rounds, sizeof *rt, cmp_u64);
    for (int i = 0; i < rounds; i++)
        printf("%.3f\n", (double)rt[i] / 1000.0);
    free(rt);
    czmp_segment_detach(seg);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 7 && strcmp(argv[1], "mpmc") == 0)
        return bench_mpmc(argv[2], atoi(argv[3]), atoi(argv[4]), strtoull(argv[5], NULL, 10),
                          atoi(argv[6]));
    if (argc >= 5 && strcmp(argv[1], "arena") == 0)
        return bench_arena(argv[2], strtoull(argv[3], NULL, 10), strtoull(argv[4], NULL, 10));
    if (argc >= 5 && strcmp(argv[1], "wake") == 0)
        return bench_wake(argv[2], atoi(argv[3]), atoi(argv[4]));
    fprintf(stderr, "usage: see the top of native_driver.c\n");
    return 2;
}
