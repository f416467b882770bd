"""Task functions of the native-task tests (importable by worker processes)."""
from __future__ import annotations

import importlib.util

import pytest

#: numba tests are skipped where numba is not installed (its absence has a test of its own)
needs_numba = pytest.mark.skipif(importlib.util.find_spec("numba") is None,
                                 reason="numba is not installed")


def mandel(x0: float, y0: float, step: float, w: int, h: int, max_iter: int) -> int:
    """Total escape-time iterations of a w x h Mandelbrot tile: numeric, numba compiles it."""
    total = 0
    for j in range(h):
        for i in range(w):
            cr = x0 + i * step
            ci = y0 + j * step
            zr = 0.0
            zi = 0.0
            n = 0
            while n < max_iter and zr * zr + zi * zi <= 4.0:
                zr, zi = zr * zr - zi * zi + cr, 2.0 * zr * zi + ci
                n += 1
            total += n
    return total


def scaled_sum(n: int, factor: float = 2.0) -> float:
    """Decorated with compile_to_c=True in a test (its own function: decorating marks it)."""
    s = 0.0
    for i in range(n):
        s += i * factor
    return s


def not_numeric(word: str) -> dict:
    """numba has no dict of lists of str: it runs as Python."""
    return {word: [word.upper()]}


def py_checksum(data) -> int:
    """The C checksum of the tests, in Python."""
    s = 0
    for b in bytes(data):
        s = (s * 31 + b) & 0xFFFFFFFFFFFFFFFF
    return s


CHECKSUM_C = """
#include <stdint.h>
#include <stddef.h>
uint64_t checksum(const uint8_t *p, size_t n) {
    uint64_t s = 0;
    for (size_t i = 0; i < n; i++) s = s * 31 + p[i];
    return s;
}
"""
CHECKSUM_DECL = "uint64_t checksum(const uint8_t *p, size_t n)"

SUM_DOUBLES_C = """
#include <stddef.h>
double sum_doubles(const double *a, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i];
    return s;
}
"""

CRASH_C = """
int crash(int x) {
    volatile int *p = (volatile int *)0;
    return *p + x;   /* SIGSEGV: the worker dies like any crashed worker */
}
"""

THREAD_ID_C = """
#include <pthread.h>
#include <stdint.h>
#include <unistd.h>
uint64_t thread_id(int sleep_us) {
    usleep(sleep_us);            /* in C, without the GIL: the other threads take tasks */
    return (uint64_t)pthread_self();
}
"""


def timed_nap(seconds: float) -> tuple:
    """A Python task's (start, end) on the worker's monotonic clock."""
    import time

    start = time.monotonic()
    time.sleep(seconds)
    return start, time.monotonic()
