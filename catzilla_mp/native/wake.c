/* wake.c -- futex sleep/wake on a word in shared memory.
 *
 * Protocol (Dekker style, both sides seq_cst):
 *   sleeper:  sleepers++ ; seq = w->seq ; re-check condition ; futex_wait(seq)
 *             ; sleepers--
 *   waker:    make condition true ; fence ; if sleepers: seq++ ; futex_wake
 * Either the sleeper's re-check sees the waker's change, or the waker sees
 * the sleeper counted and bumps seq, which makes futex_wait return at once
 * (the kernel compares the word with the seq the sleeper read). The callers
 * in slots.c implement the sleeper side; czmp_wake_wait is its last step.
 *
 * The lazy wake (czmp_wake_notify_lazy) adds two mutes, each with the party
 * that lifts it:
 *   spinners  a consumer polling will see the push: no syscall. It passes
 *             the baton when it leaves with work still queued (slots.c,
 *             baton(): fence after spinners--, then re-check).
 *   waking    a wake is in flight: no second syscall until the woken
 *             consumer spins (and clears it). A sleeper clears it too on its
 *             way into futex_wait and out after a timeout, so a wake whose
 *             counted target left without spinning cannot mute later ones.
 *
 * The futexes are not FUTEX_PRIVATE: the word is shared between processes.
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

static long futex(uint32_t *uaddr, int op, uint32_t val, const struct timespec *ts) {
    return syscall(SYS_futex, uaddr, op, val, ts, NULL, 0);
}

int czmp_wake_wait(czmp_wake_t *w, uint32_t seq, int64_t timeout_ns) {
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = timeout_ns / 1000000000LL;
        ts.tv_nsec = timeout_ns % 1000000000LL;
        tsp = &ts;
    }
    czmp_fetch_add_relaxed(&w->waits, 1);
    if (futex(&w->seq, FUTEX_WAIT, seq, tsp) == 0)
        return 0;
    if (errno == EAGAIN)
        return 0;  /* the word moved before we slept: a wake happened */
    return -errno;  /* -ETIMEDOUT or -EINTR */
}

int czmp_wake_notify(czmp_wake_t *w, int n) {
    /* seq_cst fence: the caller's "condition made true" (a ring push) is
     * ordered before reading sleepers; pairs with the sleeper's increment
     * of sleepers before its re-check. */
    czmp_fence_seq_cst();
    uint32_t sleepers = czmp_load_relaxed(&w->sleepers);
    if (sleepers == 0)
        return 0;
    czmp_fetch_add(&w->seq, 1);
    czmp_fetch_add_relaxed(&w->wakes, 1);
    futex(&w->seq, FUTEX_WAKE, n <= 0 ? INT_MAX : (uint32_t)n, NULL);
    return (int)sleepers;
}

int czmp_wake_notify_lazy(czmp_wake_t *w) {
    /* seq_cst fence: pairs with the consumer's "spinners--; sleepers++;
     * fence; re-check" in slots.c, so either we see it counted as a
     * spinner or sleeper, or its re-check sees our push. */
    czmp_fence_seq_cst();
    if (czmp_load_relaxed(&w->sleepers) == 0)
        return 0;
    /* a spinner will see the push -- if it is alive: a count left by a
     * process killed mid-poll is only believed while its lease runs */
    if (czmp_load_relaxed(&w->spinners) != 0 &&
        czmp_now_ns() < czmp_load_relaxed(&w->spin_lease_ns))
        return 0;
    /* one wake in flight is enough: the woken consumer clears `waking` once
     * it counts as a spinner (slots.c), and passes the baton from there */
    uint32_t idle = 0;
    if (!czmp_cas(&w->waking, &idle, 1))
        return 0;
    czmp_fetch_add(&w->seq, 1);
    czmp_fetch_add_relaxed(&w->wakes, 1);
    futex(&w->seq, FUTEX_WAKE, 1, NULL);
    return 1;
}
