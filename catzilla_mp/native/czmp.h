/* czmp.h -- the one public header of catzilla_mp's native core.
 *
 * Everything the app process and its worker processes share lives in ONE
 * POSIX shared-memory segment, laid out as:
 *
 *   +-----------------+  offset 0
 *   | czmp_header_t   |  magic, layout version, owner, region offsets, wake words
 *   +-----------------+  header.tasks_off
 *   | task rings x4   |  CRITICAL, HIGH, NORMAL, LOW: slot hints, MPMC
 *   +-----------------+  header.results_off
 *   | result ring     |  slot hints, workers -> app
 *   +-----------------+  header.slots_off
 *   | czmp_slot_t[]   |  one per task in flight: state word, payload handles
 *   +-----------------+  header.workers_off
 *   | czmp_worker_t[] |  one per worker process: pid, heartbeat, counters
 *   +-----------------+  header.funcs_off
 *   | czmp_func_t[]   |  pickled functions, sent once, cached by workers
 *   +-----------------+  header.arena_off
 *   | chunk pools     |  per size class: holder tags, then the chunks
 *   +-----------------+  header.total_size
 *
 * Only offsets are stored in shared memory, never pointers: every process
 * maps the segment at its own address.
 *
 * Ring values are HINTS, not ownership. The truth about a task is the state
 * word of its slot, and every transition of it is one CAS. A slot index may
 * sit in a ring twice (after a ring repair, a retry or a cancel); whoever
 * loses the CAS on the slot simply drops its copy. That is what makes every
 * repair operation below safe to run while other processes are alive.
 *
 * Error convention (Redis-style, stated per function): 0 or a count on
 * success, a negative errno or negative CZMP_E* code on failure; on failure
 * the structure is unchanged unless the comment says otherwise.
 *
 * The block between CDEF BEGIN and CDEF END is fed verbatim to cffi's cdef():
 * it holds no preprocessor lines other than plain integer #defines.
 */
#ifndef CZMP_H
#define CZMP_H

#include <stddef.h>
#include <stdint.h>

/* CDEF BEGIN */
#define CZMP_MAGIC_LO 0x504d5a43          /* "CZMP" */
#define CZMP_MAGIC_HI 0x31474553          /* "SEG1" */
#define CZMP_LAYOUT_VERSION 6          /* 6: slot continuation (next, fed_handle); 5: 40+24-bit ring cells */

#define CZMP_NPRIO 4                      /* CRITICAL=0 HIGH=1 NORMAL=2 LOW=3 */
#define CZMP_MAX_CLASSES 16
#define CZMP_SLOT_SIZE 512
#define CZMP_INLINE_ARGS 184              /* bytes of arguments kept in the slot */
#define CZMP_INLINE_RESULT 224            /* bytes of result kept in the slot */
#define CZMP_RING_TOMBSTONE 16777215      /* value of a repaired, never-published cell */
#define CZMP_RING_VALUE_MAX 16777214      /* ring values are 0..this (24 bits, minus the tombstone) */
#define CZMP_MAX_SLOTS 16777215           /* slot indices are ring values */
#define CZMP_RESULT_FAILED 1              /* result_flags bit: the task failed; others are the caller's */

/* Errors beyond errno (returned negated). */
#define CZMP_EMAGIC 1001                  /* not a catzilla_mp segment */
#define CZMP_EVERSION 1002                /* other layout version */
#define CZMP_ETRUNC 1003                  /* file shorter than its header says */
#define CZMP_EOWNER 1004                  /* created by another user */
#define CZMP_ELAYOUT 1005                 /* offsets/sizes inconsistent */
#define CZMP_ECONFIG 1006                 /* invalid creation parameters */
#define CZMP_ERESULT 1007                 /* a result length beyond its area (czmp_outcome_t.error) */

/* Slot states (low 8 bits of czmp_slot_t.state). */
#define CZMP_SLOT_FREE 0                  /* on the app's free list */
#define CZMP_SLOT_QUEUED 1                /* payload written, hint in a task ring */
#define CZMP_SLOT_RUNNING 2               /* claimed by worker <owner> */
#define CZMP_SLOT_DONE 3                  /* result written by <owner>, hint in result ring */
#define CZMP_SLOT_HELD 4                  /* app holds it: delayed, backing off, collecting */
#define CZMP_SLOT_WAITING 5               /* payload written, waits for its parent's result (chain) */
#define CZMP_SLOT_FEEDING 6               /* worker <owner> is writing a parent's result into it */

/* Holder tags of arena chunks. */
#define CZMP_HOLDER_FREE 0
#define CZMP_HOLDER_APP 1                 /* the engine process itself */
#define CZMP_HOLDER_WORKER_BASE 65536     /* + worker index: chunk a worker allocated */
#define CZMP_HOLDER_SLOT_BASE 2147483648  /* + slot index: payload owned by a slot */

/* Payload handles (64 bits): kind in the top byte. */
#define CZMP_HANDLE_NONE 0
#define CZMP_HANDLE_INLINE 1              /* bytes in the slot's inline area */
#define CZMP_HANDLE_CHUNK 2               /* class in bits 48..55, chunk index in 0..31 */
#define CZMP_HANDLE_EXTERNAL 3            /* own segment; id in bits 0..31 */

/* Fault points, armed only by tests (see "faults and pauses" at the end):
 * named places in the core where a test makes this process die, stop, or
 * park one thread, to script an interleaving with other processes. */
#define CZMP_FAULT_NONE 0
#define CZMP_FAULT_RING_PUSH_CLAIMED 1    /* after claiming a ring cell, before publishing */
#define CZMP_FAULT_RING_POP_CLAIMED 2     /* after claiming a ring cell, before releasing */
#define CZMP_FAULT_TAKE_SLOT_CLAIMED 3    /* slot RUNNING, its ring cell not yet released */
#define CZMP_FAULT_ARENA_HELD 4           /* right after a chunk was allocated */
#define CZMP_FAULT_FINISH_DONE 5          /* slot DONE, hint not yet in the result ring */
#define CZMP_FAULT_RESULT_WRITTEN 6       /* result bytes in the slot, slot still RUNNING */
#define CZMP_FAULT_SPIN_FOUND 7           /* a consumer's poll found work; still counted a spinner */
#define CZMP_FAULT_SPIN_DONE 8            /* a consumer stopped spinning, not yet counted a sleeper */
#define CZMP_FAULT_SLEEP_CHECKED 9        /* counted a sleeper, re-checked, about to futex_wait */
#define CZMP_FAULT_SLEEP_TIMED_OUT 10     /* futex_wait timed out; still counted a sleeper */
#define CZMP_FAULT_PURGE_POPPED 11        /* app popped a full task ring, live hints not pushed back */
#define CZMP_FAULT_SUBMIT_WAITING 12      /* a submit found its ring full and waits for room */
#define CZMP_FAULT_FEED_CLAIMED 13       /* child FEEDING(w), fed chunk written; parent still RUNNING */
#define CZMP_FAULT_FEED_QUEUED 14        /* child QUEUED with its fed value; parent not yet DONE */
#define CZMP_FAULT_NPOINTS 15

/* What an armed fault point does (czmp_fault_arm_action). */
#define CZMP_FAULT_KILL 0                 /* raise(SIGKILL) */
#define CZMP_FAULT_STOP 1                 /* raise(SIGSTOP): the test sees the process stopped
                                             (waitpid WUNTRACED), acts, then SIGCONTs or kills it */
#define CZMP_FAULT_PARK 2                 /* the thread that reaches it blocks until
                                             czmp_fault_release(point); for calls that run
                                             without the GIL, in a thread of the test itself */

/* Worker record states. */
#define CZMP_WORKER_EMPTY 0
#define CZMP_WORKER_STARTING 1
#define CZMP_WORKER_IDLE 2
#define CZMP_WORKER_BUSY 3
#define CZMP_WORKER_STOPPING 4
#define CZMP_WORKER_DEAD 5

/* A futex word plus the count of processes sleeping on it. A waker makes a
 * syscall only when sleepers > 0, so a busy system pays no wake cost. */
typedef struct czmp_wake {
    uint32_t seq;         /* wakers: fetch_add seq_cst; sleepers futex-wait on it */
    uint32_t sleepers;    /* sleepers: inc seq_cst before re-checking, dec after */
    uint64_t wakes;       /* statistic: futex_wake syscalls made */
    uint64_t waits;       /* statistic: futex_wait syscalls made */
    uint32_t spinners;    /* consumers polling before they sleep: while one spins,
                             a producer need not wake anybody (it will be seen) */
    uint32_t waking;      /* lazy wakers: CAS 0 -> 1 before their FUTEX_WAKE; cleared
                             (store release) by a consumer that starts spinning, by a
                             sleeper about to futex_wait or leaving on a timeout, and
                             by the reap of a dead worker: a burst of pushes then makes
                             one syscall, not one each, and a mark whose target never
                             came cannot mute later wakes (issue 10.6) */
    uint64_t spin_lease_ns; /* spinners: CLOCK_MONOTONIC time until which `spinners`
                             is trusted, renewed while polling, 0 when one stops; a
                             SIGKILLed spinner's count thus stops muting wakes */
    uint64_t pad[3];
} czmp_wake_t;            /* 64 bytes, one cache line */

/* Creation parameters. Chunk sizes must be multiples of 64, ascending. */
typedef struct czmp_config {
    uint32_t nslots;              /* tasks in flight at most; >= 1 */
    uint32_t nworkers;            /* worker records; >= 1, < 65536 */
    uint32_t nfuncs;              /* function table entries; >= 1 */
    uint32_t nclasses;            /* arena size classes, 0..CZMP_MAX_CLASSES */
    uint64_t class_size[16];      /* chunk bytes per class */
    uint32_t class_count[16];     /* chunks per class */
    uint32_t populate;            /* nonzero: pre-fault every page at creation */
} czmp_config_t;

typedef struct czmp_class_info {
    uint64_t chunk_size;
    uint32_t nchunks;
    uint32_t pad;
    uint64_t tags_off;            /* uint32_t holder tag per chunk */
    uint64_t data_off;            /* nchunks * chunk_size bytes */
    uint64_t hint;                /* next-fit start index; any process, relaxed */
    uint64_t pad2[3];
} czmp_class_info_t;              /* 64 bytes */

typedef struct czmp_header {
    uint32_t magic_lo, magic_hi;
    uint32_t version;
    uint32_t header_size;
    uint64_t total_size;
    uint32_t owner_uid;
    uint32_t owner_pid;
    uint64_t owner_start;         /* owner's start time, clock ticks since boot */
    uint64_t created_ns;          /* CLOCK_REALTIME at creation */
    uint32_t nslots, nworkers, nfuncs, nclasses;
    uint32_t ring_cap;            /* power of two >= 2 * nslots (and >= 64) */
    uint32_t ready;               /* 1 once fully initialised (release) */
    uint64_t tasks_off;           /* CZMP_NPRIO rings, each czmp_ring_bytes(ring_cap) */
    uint64_t results_off;
    uint64_t slots_off;
    uint64_t workers_off;
    uint64_t funcs_off;
    uint64_t arena_off;
    uint64_t ring_bytes;
    uint32_t shutdown;            /* app: store release 1; workers: load acquire */
    uint32_t pad0;
    uint64_t pad1[7];
    czmp_wake_t task_wake;        /* workers sleep here for tasks */
    czmp_wake_t result_wake;      /* the app's collector sleeps here for results */
    czmp_class_info_t classes[16];
} czmp_header_t;

/* One task in flight. The state word is the single source of truth:
 *   bits 0..7 state, 8..23 owner (worker index + 1, 0 = none), 32..63 generation.
 * The generation grows each time the slot is freed, so a stale ring hint or a
 * late CAS from a previous use can never match. */
typedef struct czmp_slot {
    uint64_t state;               /* CAS only, acq_rel; see the layout above */
    uint32_t priority;            /* app, before QUEUED */
    uint32_t attempt;             /* app, before QUEUED; 0 for the first run */
    uint64_t func_id;             /* app: index into the function table */
    uint64_t task_id;             /* app: the engine's id for this task */
    uint64_t queued_ns;           /* app: when it became QUEUED */
    uint64_t started_ns;          /* worker: when it became RUNNING */
    uint64_t finished_ns;         /* worker: when it became DONE */
    uint64_t args_handle;         /* app; chunk tagged SLOT_BASE + index */
    uint64_t result_handle;       /* worker, before DONE */
    uint32_t args_len;
    uint32_t result_len;
    uint32_t result_flags;        /* worker: CZMP_RESULT_FAILED, plus bits of its own */
    uint32_t worker;              /* worker index that last ran it */
    uint64_t next;                /* app, store release (czmp_slot_set_next); feeding worker,
                                     load acquire: the continuation, 0 = none; see
                                     czmp_next_make. Cleared by czmp_slot_release. */
    uint64_t fed_handle;          /* feeding worker, while the slot is FEEDING for it (before
                                     the QUEUED CAS releases it): chunk tagged SLOT_BASE + index
                                     holding [u32 len][u32 flags][len bytes] of the parent's
                                     outcome; freed by czmp_slot_release only */
    uint8_t args_inline[184];     /* CZMP_INLINE_ARGS */
    uint8_t result_inline[224];   /* CZMP_INLINE_RESULT */
} czmp_slot_t;                    /* 512 bytes */

/* One worker process, written mostly by itself. */
typedef struct czmp_worker {
    uint32_t pid;                 /* worker at start; app clears after reaping */
    uint32_t state;               /* CZMP_WORKER_*, the worker's own view */
    uint64_t heartbeat_ns;        /* worker's native heartbeat thread, relaxed */
    uint64_t started_ns;
    uint64_t tasks_done;          /* worker, relaxed */
    uint64_t tasks_failed;        /* worker, relaxed */
    uint64_t busy_ns;             /* worker: time spent running tasks */
    uint32_t current_slot;        /* worker: slot being run + 1, 0 = none */
    uint32_t incarnation;         /* app: bumped each time the record is reused */
    uint64_t progress_seq;        /* worker: odd while writing progress, even when stable */
    double progress;              /* worker: report_progress() of the running task */
    uint64_t deadline_ns;         /* worker: earliest timeout of its running tasks, 0 none;
                                     the app signals it then, and kills it after a grace */
    char progress_msg[48];        /* worker: its message, NUL-terminated */
} czmp_worker_t;                  /* 128 bytes */

/* A pickled function, written once by the app, read by every worker. */
typedef struct czmp_func {
    uint64_t handle;              /* app, once, before the first task naming it is QUEUED */
    uint32_t len;                 /* app, idem; a worker bounds it by the chunk (payloads.py) */
    uint32_t pad;                 /* was `ready` (layout 4), never read: the slot's QUEUED CAS
                                     (release) already orders handle/len before any take */
} czmp_func_t;

typedef struct czmp_segment czmp_segment_t;   /* process-local mapping handle */
typedef struct czmp_ring czmp_ring_t;         /* process-local view of a ring, opaque */

/* The geometry a process took from its segment at create or attach: the
 * only counts it trusts (a header field may have been overwritten since). */
typedef struct czmp_layout {
    uint64_t total_size;
    uint32_t nslots, nworkers, nfuncs, nclasses;
    uint32_t ring_cap;
    uint32_t pad;
} czmp_layout_t;

typedef struct czmp_class_stats {
    uint64_t chunk_size;
    uint32_t nchunks;
    uint32_t used;
} czmp_class_stats_t;

/* ---- segment.c ---------------------------------------------------------- */

/* Bytes a segment with this configuration needs; 0 if the config is invalid. */
uint64_t czmp_segment_size(const czmp_config_t *cfg);

/* Create /dev/shm/<name> (O_CREAT|O_EXCL, 0600), size, map, initialise.
 * The creator keeps the file open with flock(LOCK_EX) until
 * czmp_segment_detach: the proof, valid across PID namespaces, that the
 * owner lives (segment_janitor.py). Returns 0 and *out, or -EEXIST,
 * -CZMP_ECONFIG (also for sizes that overflow), -EAGAIN (a janitor kept
 * removing the fresh name), -errno; nothing is left behind on failure. */
int czmp_segment_create(const char *name, const czmp_config_t *cfg,
                        czmp_segment_t **out);

/* Map an existing segment and validate magic, version, owner uid, sizes and
 * offsets (on a private copy of the header, with overflow-checked sums),
 * then take that copy as this process's geometry for good.
 * Returns 0 and *out, or -ENOENT, -CZMP_EMAGIC, -CZMP_EVERSION,
 * -CZMP_ETRUNC, -CZMP_EOWNER, -CZMP_ELAYOUT, -errno. */
int czmp_segment_attach(const char *name, czmp_segment_t **out);

/* Pre-fault the whole mapping for writing in this process (allocating the
 * pool's pages that are not yet; contents are never changed). Slow (~0.3 s
 * for 500 MiB here); the engine uses czmp_arena_prefault in small steps
 * instead. 0, or -errno (-EINVAL: kernel before 5.14; -EFAULT: /dev/shm is
 * full). */
int czmp_segment_prefault(czmp_segment_t *seg);

/* Stop this process's heartbeat thread if it writes into this mapping
 * (joining it), unmap, release the owner lock if we are the creator, and
 * free the handle. Never fails. NULL is ignored. */
void czmp_segment_detach(czmp_segment_t *seg);

/* shm_unlink. Returns 0 or -errno (-ENOENT if already gone). */
int czmp_segment_unlink(const char *name);

/* The shared header: for the shutdown flag, wake statistics and display.
 * Its counts and offsets may have been overwritten since attach; size
 * nothing from them (use czmp_segment_layout). */
czmp_header_t *czmp_segment_header(czmp_segment_t *seg);
void *czmp_segment_base(czmp_segment_t *seg);
/* This process's validated geometry. Cannot fail. */
void czmp_segment_layout(czmp_segment_t *seg, czmp_layout_t *out);

/* Start time of a process (clock ticks since boot, field 22 of
 * /proc/<pid>/stat), or 0 if no such process. Used with the pid to name
 * and to judge owners, so a reused pid cannot pass for a dead owner. */
uint64_t czmp_process_start_time(uint32_t pid);

uint64_t czmp_now_ns(void);       /* CLOCK_MONOTONIC */

/* Worker side: ask for SIGKILL when the thread that started us exits, then
 * check the parent is still parent_pid (it may have died before the prctl).
 * 0, or -ESRCH if the parent is already gone. */
int czmp_process_die_with_parent(uint32_t parent_pid);

/* ---- ring.c: bounded lock-free MPMC ring of 24-bit values -------------- */

/* The process-local view of a ring (valid while the segment is mapped). */
czmp_ring_t *czmp_segment_task_ring(czmp_segment_t *seg, int prio);  /* NULL if out of range */
czmp_ring_t *czmp_segment_result_ring(czmp_segment_t *seg);
/* Address of the ring's words in shared memory: tail at word 0, head at
 * word 8, cells from word 24 (tests and read-only views only). */
void *czmp_ring_shared(czmp_ring_t *r);

/* Push one value (0..CZMP_RING_VALUE_MAX). 0, -EAGAIN when full (or when
 * its words were overwritten into an impossible state), -EINVAL. */
int czmp_ring_push(czmp_ring_t *r, uint32_t v);
/* Pop one value. 0, or -EAGAIN when empty. Tombstones are skipped. */
int czmp_ring_pop(czmp_ring_t *r, uint32_t *v);
/* Push up to n values; returns how many were pushed (a prefix of vals; it
 * stops before a value above CZMP_RING_VALUE_MAX). */
int czmp_ring_push_many(czmp_ring_t *r, const uint32_t *vals, int n);
/* Pop up to n values; returns how many (0 when empty). */
int czmp_ring_pop_many(czmp_ring_t *r, uint32_t *vals, int n);
/* Approximate number of cells claimed and not yet consumed. */
uint64_t czmp_ring_size(czmp_ring_t *r);
uint32_t czmp_ring_capacity(czmp_ring_t *r);

/* Repair cells left behind by a process that died inside push or pop:
 *   - a cell claimed by a producer but never published becomes a tombstone
 *     (a live, slow producer then fails its publishing CAS and retries);
 *   - a cell claimed by a consumer but never released is released, and its
 *     value is written to recovered[] so the caller can re-push it if the
 *     slot still needs it (values are hints: a duplicate is harmless).
 * Only cells already claimed at the previous call with the same cookie are
 * touched, so a cell merely in progress is left alone: call it twice, some
 * time apart. cookie points to 2 uint64_t, zeroed before the first call.
 * Returns the number of values written to recovered (<= max). */
int czmp_ring_repair(czmp_ring_t *r, uint64_t *cookie, uint32_t *recovered, int max);

/* Tests only: make an EMPTY ring continue at position pos (all cells free
 * for pos..pos+cap-1), to put a test at a sequence wrap without 2^32 real
 * operations. Only while no other process pushes or pops. 0, or -EBUSY if
 * the ring is not empty. */
int czmp_ring_debug_seek(czmp_ring_t *r, uint64_t pos);

/* ---- wake.c ------------------------------------------------------------- */

/* Sleep until woken or timeout_ns passes, unless the word moved past seq
 * (the caller read seq before re-checking its condition). 0 when woken or
 * the word moved, -ETIMEDOUT, -EINTR. */
int czmp_wake_wait(czmp_wake_t *w, uint32_t seq, int64_t timeout_ns);
/* Wake up to n sleepers; no syscall when nobody sleeps. Returns sleepers seen. */
int czmp_wake_notify(czmp_wake_t *w, int n);
/* As czmp_wake_notify, but no syscall either while a consumer is spinning:
 * that consumer will find the work, and wakes a sleeper itself if it finds
 * more than it takes (see slots.c). Returns 1 if it made the syscall. */
int czmp_wake_notify_lazy(czmp_wake_t *w);

/* ---- slots.c: the task queue and the slot state machine ----------------- */

czmp_slot_t *czmp_slot(czmp_segment_t *seg, uint32_t idx);          /* NULL if out of range */
czmp_worker_t *czmp_worker(czmp_segment_t *seg, uint32_t idx);      /* NULL if out of range */
czmp_func_t *czmp_func(czmp_segment_t *seg, uint32_t idx);          /* NULL if out of range */

uint64_t czmp_slot_state(czmp_segment_t *seg, uint32_t idx);        /* acquire load; 0 if out of range */
/* CAS the state word. 0, -EAGAIN if it was not `expect`, -EINVAL. */
int czmp_slot_cas(czmp_segment_t *seg, uint32_t idx, uint64_t expect, uint64_t desired);

/* App: make HELD or FREE slots QUEUED (stamping queued_ns) and push their
 * hints on ring[prio], then wake sleeping workers. Each slot must be in the
 * state its caller gave it (HELD or FREE) with no other process touching it.
 *
 * Returns how many were queued: a PREFIX of idx. The caller MUST check it:
 * slots idx[ret..n) were not queued and are still in the caller's hands,
 * in the state it gave them (nothing is lost, but nothing will run them
 * either; retry later, or fail those tasks). That happens rarely: rings
 * hold 2 * nslots cells, a ring full of stale hints is purged (every live
 * hint is pushed back, issue 10.1), and a ring that only looks full -- a
 * worker stalled or dead between claiming and releasing a cell, until the
 * next repair -- is waited on for up to 2 ms. Hints already queued, by this
 * call or earlier ones, are never dropped. -EINVAL on a bad priority or a
 * bad first index (nothing queued).
 *
 * GIL (cffi glue, build_native.py): the call first tries without waiting,
 * with the GIL held; only if a ring has no room does it release the GIL for
 * the purge and the wait, so other threads -- the supervisor whose repair
 * frees the cell -- run meanwhile (issue 10.8). Same for the two
 * czmp_tasks_submit_inline* calls below. */
int czmp_tasks_submit(czmp_segment_t *seg, int prio, const uint32_t *idx, int n);

/* Worker `worker`: take up to max tasks, highest priority first, claiming
 * each slot QUEUED -> RUNNING(worker) before releasing its ring cell (so a
 * crash at any point leaves either a stuck cell that repair hands back, or a
 * RUNNING slot owned by the dead worker). Spins briefly, then sleeps up to
 * timeout_ns. Returns how many slots were written to out (0 on timeout or
 * shutdown), or -EINVAL. */
int czmp_tasks_take(czmp_segment_t *seg, uint32_t worker, uint32_t *out, int max,
                    int64_t timeout_ns);

/* App, the whole submit of a small task in one call: write func_id, task_id
 * and len bytes of arguments into slot idx's inline area (args_handle =
 * CZMP_HANDLE_INLINE << 56), then queue it as czmp_tasks_submit(seg, prio,
 * &idx, 1). Returns 1 if queued; 0 if the slot was neither FREE nor HELD
 * (nothing written) or if its ring had no room (arguments written, slot
 * back in the state it had: the caller still owns it); -EMSGSIZE if len >
 * CZMP_INLINE_ARGS, -EINVAL on a bad slot or priority. */
int czmp_tasks_submit_inline(czmp_segment_t *seg, int prio, uint32_t idx, uint64_t func_id,
                             uint64_t task_id, const void *args, uint32_t len);

/* App: czmp_tasks_submit_inline for n slots of one priority and function in
 * one call. Slot idx[i] gets task_ids[i] and the len[i] bytes at data +
 * off[i]; then all are queued with one wake-up. Returns how many were queued
 * (a prefix: it stops at the first slot that is neither FREE nor HELD, or
 * as czmp_tasks_submit when a ring has no room; the caller owns the rest),
 * -EMSGSIZE if a len exceeds CZMP_INLINE_ARGS or -EINVAL (nothing queued). */
int czmp_tasks_submit_inline_many(czmp_segment_t *seg, int prio, const uint32_t *idx, int n,
                                  uint64_t func_id, const uint64_t *task_ids,
                                  const void *data, const uint32_t *off, const uint32_t *len);

/* Worker, as czmp_tasks_take with max 1, then copy the task's arguments
 * (inline or chunk; at most cap bytes) to buf. Returns 1 with *idx and *len
 * (the full args_len: if it exceeds cap, only cap bytes were copied; for an
 * external handle nothing is copied), 0 on timeout or shutdown, -EINVAL. */
int czmp_tasks_take_copy(czmp_segment_t *seg, uint32_t worker, uint32_t *idx, void *buf,
                         uint32_t cap, uint32_t *len, int64_t timeout_ns);

/* Worker: RUNNING(worker) -> DONE(worker), stamp finished_ns, push the hint
 * to the result ring and wake the collector. If the result ring looks full
 * (a collector stalled or died inside a pop) it waits until the cell is
 * released or repaired: the hint is never dropped. 0, or -ESTALE if the slot is no
 * longer RUNNING for this worker (the app took it back: timeout, cancel). */
int czmp_tasks_finish(czmp_segment_t *seg, uint32_t worker, uint32_t idx);

/* Worker, the whole publish of a small outcome in one call: check the slot
 * is RUNNING for this worker, copy len bytes into the slot's inline result
 * area (result_handle = INLINE), set result_flags, credit the worker record
 * (busy_ns += now - started_ns, tasks_done or, with CZMP_RESULT_FAILED,
 * tasks_failed; current_slot = 0), then finish as czmp_tasks_finish.
 * -ESTALE if the slot is not RUNNING for this worker (published already, or
 * taken back by the app): NOTHING is written, not even the record.
 * -EMSGSIZE if len > CZMP_INLINE_RESULT (nothing written), -EINVAL, or
 * czmp_tasks_finish's result. */
int czmp_tasks_finish_inline(czmp_segment_t *seg, uint32_t worker, uint32_t idx,
                             uint32_t flags, const void *data, uint32_t len);

/* Worker, the publish of an outcome already stored elsewhere (a chunk it
 * holds, or an external segment): check the slot is RUNNING for this worker,
 * then set result_handle, result_len, result_flags, credit the record as
 * czmp_tasks_finish_inline does, and finish as czmp_tasks_finish. -ESTALE
 * (nothing written; the caller still owns and frees its chunk or external
 * segment), -EINVAL, or czmp_tasks_finish's result. Use it instead of
 * writing the slot's result fields and then calling czmp_tasks_finish,
 * which writes into a slot that may no longer be ours (issue 10.11). */
int czmp_tasks_finish_handle(czmp_segment_t *seg, uint32_t worker, uint32_t idx,
                             uint32_t flags, uint64_t handle, uint32_t len);

/* What the app needs of one finished slot, gathered by one C call. */
typedef struct czmp_outcome {
    uint64_t state;               /* the slot's state word, now HELD: pass to czmp_slot_release */
    uint64_t handle;              /* result_handle */
    uint64_t started_ns;
    uint64_t finished_ns;
    uint32_t idx;
    uint32_t flags;               /* result_flags */
    uint32_t len;                 /* result_len */
    uint32_t worker;
    uint32_t data_off;            /* inline result copied to data + data_off; UINT32_MAX if not */
    uint32_t error;               /* 0, or CZMP_ERESULT: result_len exceeded its inline area or
                                     chunk (a worker bug or a hostile write); len is then 0 and
                                     the app must fail the task instead of reading its result */
} czmp_outcome_t;                 /* 56 bytes */

/* App: as czmp_results_collect (at most 256 per call), and for each slot
 * taken fill out[i] and copy an inline result into data (up to data_cap
 * bytes in all; results that do not fit are left in the slot, data_off =
 * UINT32_MAX). A result_len beyond the inline area or the chunk its handle
 * names sets out[i].error = CZMP_ERESULT and len = 0: fail that task, do not
 * read its result. (An external handle's length is bounded by the size of
 * its own segment, which the reader maps.) Returns the count, 0 on timeout,
 * -EINVAL. */
int czmp_results_collect_outcomes(czmp_segment_t *seg, czmp_outcome_t *out, int max,
                                  void *data, uint32_t data_cap, int64_t timeout_ns);

/* App: czmp_results_collect_outcomes, and with CZMP_COLLECT_RELEASE_OK in
 * `how`, each slot whose outcome succeeded (no CZMP_RESULT_FAILED in its
 * flags, no error) and whose inline result was copied into data is released
 * too, as czmp_slot_release does (HELD -> FREE, generation bumped, its args
 * chunk freed): its out[i].state is then that FREE state word, and the app
 * must neither release it again nor read the slot (its result is in data).
 * The collector's hot path: one C call per batch instead of one per slot.
 * With how = 0 it is czmp_results_collect_outcomes. */
#define CZMP_COLLECT_RELEASE_OK 1
int czmp_results_collect_outcomes_ex(czmp_segment_t *seg, czmp_outcome_t *out, int max,
                                     void *data, uint32_t data_cap, int64_t timeout_ns,
                                     uint32_t how);

/* App: take up to max finished slots, DONE -> HELD; stale and duplicate
 * hints are dropped. Spins briefly, then sleeps up to timeout_ns, or until
 * the segment is shut down; leaving with results still queued, it wakes a
 * sleeping collector (the baton, as czmp_tasks_take does). Returns the count
 * (0 on timeout or shutdown). */
int czmp_results_collect(czmp_segment_t *seg, uint32_t *out, int max, int64_t timeout_ns);

/* App: HELD or QUEUED -> FREE with the generation bumped; frees the args,
 * result and fed chunks the slot owns and clears its continuation. 0 or -EAGAIN if the slot was in another
 * state (a worker claimed it first). */
int czmp_slot_release(czmp_segment_t *seg, uint32_t idx, uint64_t expect_state);

/* ---- chains: a parent's result fed worker-to-worker (issue 15) ----------
 *
 * The app makes a dependant ("child") WAITING instead of QUEUED: its call is
 * written as for any task (czmp_slot_cas FREE or HELD -> WAITING), and the
 * parent's slot gets a continuation naming it (czmp_slot_set_next). The
 * worker that finishes the parent successfully feeds the child before it
 * publishes the parent (czmp_tasks_feed): the parent's outcome bytes go
 * into a chunk the child owns, and the child is queued without the app.
 * The app takes a child back with czmp_slot_cas WAITING -> HELD (exactly
 * one of it and a feeding worker wins) when the parent failed, the child is
 * cancelled, or nobody fed it (then it feeds it itself). */

/* The continuation word (czmp_slot_t.next): child index + 1 in bits 0..23,
 * the low 20 bits of the child's generation (its WAITING word) in 24..43,
 * the low 20 bits of the parent's own generation in 44..63. A feeder acts
 * only if both still match: a word left in a slot reused since (the
 * parent's generation moved) or naming a child reused since is ignored. */
#define CZMP_NEXT_GEN_MASK 1048575

/* App: record in slot `parent` (whose state word the caller read as
 * parent_state) that its successful outcome feeds slot `child`, WAITING
 * with the state word child_state. One store release; the feeder's load
 * acquire pairs with it. The parent may already be RUNNING: a worker that
 * read the word before this store does not feed, and the app finds the
 * child still WAITING when the parent is collected (it feeds it itself).
 * 0, or -EINVAL (bad index, child_state not WAITING). */
int czmp_slot_set_next(czmp_segment_t *seg, uint32_t parent, uint64_t parent_state,
                       uint32_t child, uint64_t child_state);

/* Worker `worker`, finishing slot idx (RUNNING for it) with a success whose
 * outcome is flags + len bytes at data, BEFORE it publishes idx: if idx has
 * a continuation whose child is still WAITING, CAS the child WAITING ->
 * FEEDING(worker), copy [len][flags][bytes] into a chunk tagged
 * WORKER_BASE + worker, retag it SLOT_BASE + child, store it as the child's
 * fed_handle, then CAS FEEDING(worker) -> QUEUED and push the child's hint
 * on ring[child's priority] (as czmp_tasks_submit: purge, wait up to 2 ms,
 * never drop a hint it pushed).
 * Returns 1 (the child is queued with its fed value), 0 (no continuation,
 * idx not RUNNING for this worker, or the child is not WAITING: fed
 * already by an earlier attempt, cancelled, reused; nothing changed), or
 * -EFBIG/-ENOMEM/-ENOSPC (no chunk for it) / -EAGAIN (its ring had no
 * room): the child is WAITING again with no fed chunk, nothing leaked, and
 * the app feeds it when it collects the parent.
 * Crash: a worker dead with a child FEEDING for it leaves its parent
 * RUNNING too (the parent is published only after the child is queued);
 * czmp_worker_reap turns the child back to WAITING and frees the chunk,
 * and the parent's retry feeds it again. */
int czmp_tasks_feed(czmp_segment_t *seg, uint32_t worker, uint32_t idx, uint32_t flags,
                    const void *data, uint32_t len);

/* App, after worker `worker` died: RUNNING(worker) slots become HELD
 * (running[] and done[] need room for the layout's nslots entries each;
 * a RUNNING slot's result chunk is freed, but an EXTERNAL result_handle is
 * left in the slot: the app unlinks that segment, whose name only it knows,
 * before it releases or requeues the slot)
 * (written to running[], their result chunk freed); DONE(worker) slots
 * become HELD (written to done[]); FEEDING(worker) slots become WAITING
 * again, their fed chunk freed (their parent, RUNNING(worker), is in
 * running[]: its retry feeds them); chunks the worker held are freed; all
 * rings are repaired (pass the same cookie array of 2*(CZMP_NPRIO+1)
 * entries between calls) and recovered hints whose slot is still QUEUED are pushed
 * back. Returns 0; counts via *nrunning and *ndone. */
int czmp_worker_reap(czmp_segment_t *seg, uint32_t worker,
                     uint32_t *running, uint32_t *nrunning,
                     uint32_t *done, uint32_t *ndone, uint64_t *cookies);
/* Repair every ring (see czmp_ring_repair) and re-push recovered task hints
 * whose slot is still QUEUED. Returns cells repaired. */
int czmp_rings_repair(czmp_segment_t *seg, uint64_t *cookies);

/* Start a native thread in this process that writes heartbeat_ns of worker
 * `worker` every period_ns until czmp_heartbeat_stop() or the detach of
 * seg, which joins it (no write can land in an unmapped segment). 0, -EBUSY
 * if one runs already, -EINVAL, -errno. */
int czmp_heartbeat_start(czmp_segment_t *seg, uint32_t worker, int64_t period_ns);
void czmp_heartbeat_stop(void);

/* App: set the shutdown flag and wake every sleeper. */
void czmp_segment_shutdown(czmp_segment_t *seg);

/* ---- arena.c: size-class chunk pools ------------------------------------ */

/* Allocate a chunk of the smallest class >= size, tagged `holder`, its
 * first `size` bytes backed by tmpfs pages (populated now if this process
 * has not yet). 0 and *handle; -EFBIG if size exceeds the largest class;
 * -ENOMEM if every fitting chunk is taken; -ENOSPC if /dev/shm has no page
 * left for it (nothing is then allocated). */
int czmp_arena_alloc(czmp_segment_t *seg, uint64_t size, uint32_t holder, uint64_t *handle);
/* Back (populate) whole chunks ahead of need, about max_bytes per call,
 * from *cursor (start at 0; advanced). The first call also faults in the
 * slot table, records and tags (max_bytes 0: only that). 1: more to do,
 * 0: every chunk is backed, -ENOSPC: /dev/shm is full (stop; allocs still
 * fail cleanly). */
int czmp_arena_prefault(czmp_segment_t *seg, uint64_t *cursor, uint64_t max_bytes);
/* Address of a chunk handle, or NULL if the handle is not a valid chunk. */
void *czmp_arena_ptr(czmp_segment_t *seg, uint64_t handle);
uint64_t czmp_arena_chunk_size(czmp_segment_t *seg, uint64_t handle);  /* 0 if invalid */
/* Free a chunk if it is tagged `holder`. 0, -EINVAL bad handle, -EPERM
 * tagged otherwise (nothing changes: a double free is refused). */
int czmp_arena_free(czmp_segment_t *seg, uint64_t handle, uint32_t holder);
/* Move a chunk from one holder to another (CAS). 0, -EINVAL, -EPERM. */
int czmp_arena_retag(czmp_segment_t *seg, uint64_t handle, uint32_t from, uint32_t to);
uint32_t czmp_arena_holder(czmp_segment_t *seg, uint64_t handle);  /* 0 if invalid */
/* Free every chunk tagged `holder`; returns how many. */
int czmp_arena_reclaim(czmp_segment_t *seg, uint32_t holder);
/* Usage of class cls. 0 or -EINVAL. */
int czmp_arena_stats(czmp_segment_t *seg, int cls, czmp_class_stats_t *out);
/* Largest payload the arena can hold. */
uint64_t czmp_arena_max_size(czmp_segment_t *seg);

/* ---- faults and pauses (tests only) ------------------------------------ *
 *
 * The harness for deterministic interleavings. A CZMP_FAULT_* point is a
 * named place in the core; a test arms it in one process, and the
 * countdown-th time any thread of that process reaches it, the point fires
 * once (then disarms itself) with its action:
 *   CZMP_FAULT_KILL  the process SIGKILLs itself: a crash exactly there;
 *   CZMP_FAULT_STOP  the process SIGSTOPs itself: the test (its parent) sees
 *                    it with waitpid(WUNTRACED), runs other operations, then
 *                    SIGCONTs it (resume) or SIGKILLs it (crash there);
 *   CZMP_FAULT_PARK  the thread blocks on a process-local futex; another
 *                    thread of the test waits for czmp_fault_parked(point),
 *                    runs its operations, then czmp_fault_release(point).
 *                    Only inside calls that release the GIL (build_native),
 *                    or the test's other threads could not run. A park ends
 *                    by itself after 60 s, so a test whose other side never
 *                    came fails instead of hanging.
 * Any number of points may be armed at once (a bit mask). Disarmed, a point
 * costs one load of that mask and a compare with zero, predicted not taken.
 * tests/native/test_interleavings.py scripts each defect of issue 10 with it.
 */

/* Arm `point` with CZMP_FAULT_KILL (the original fault points); point 0
 * disarms every point. Never fails. */
void czmp_fault_arm(int point, uint64_t countdown);
/* Arm `point` with `action`, firing on the countdown-th hit (0 acts as 1).
 * 0, or -EINVAL for a bad point or action. */
int czmp_fault_arm_action(int point, uint64_t countdown, int action);
/* Threads parked at `point` now (0 for a bad point). */
int czmp_fault_parked(int point);
/* Disarm `point` and resume the threads parked there. Never fails. */
void czmp_fault_release(int point);
/* CDEF END */

#endif /* CZMP_H */
