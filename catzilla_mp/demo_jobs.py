"""The demo's task functions: the CPU-heavy work a web app hands to the background.

Module-level functions of an importable module, so worker processes import
them by name. Pure Python and the standard library only: the demo must run
on a fresh install, and pure-Python loops are exactly the work that the
app's GIL serialises and worker processes parallelise.

Every function is deterministic in its arguments, so the serial baseline in
demo.py runs the very same work.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import random
import statistics
import time

from .progress import report_progress


def hash_password(password: str, salt: bytes, iterations: int) -> str:
    """A sign-up or password change: PBKDF2-HMAC-SHA256, as a Django or Flask app does it."""
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations).hex()


def make_thumbnail(seed: int, width: int, height: int, thumb_width: int) -> dict:
    """An uploaded photo: decode (here: synthesise) RGB pixels, box-downscale, tone-map.

    The pixels are generated from ``seed`` instead of read from a file so
    the demo needs no images; the resize is an area average over each
    target pixel's source block, the way PIL's BOX filter works.
    """
    rng = random.Random(seed)
    # a smooth gradient with noise: compressible like a photo, not constant
    pixels = bytearray(width * height * 3)
    noise = [rng.randrange(32) for _ in range(251)]
    i = 0
    for y in range(height):
        for x in range(width):
            n = noise[(x * 7 + y * 13) % 251]
            pixels[i] = (x * 255 // width + n) & 255
            pixels[i + 1] = (y * 255 // height + n) & 255
            pixels[i + 2] = ((x + y) * 127 // (width + height) + 2 * n) & 255
            i += 3
    block = max(1, width // thumb_width)
    tw, th = width // block, height // block
    thumb = bytearray(tw * th * 3)
    area = block * block
    row_bytes = width * 3
    for ty in range(th):
        for tx in range(tw):
            r = g = b = 0
            for y in range(ty * block, ty * block + block):
                base = y * row_bytes + tx * block * 3
                for j in range(base, base + block * 3, 3):
                    r += pixels[j]
                    g += pixels[j + 1]
                    b += pixels[j + 2]
            o = (ty * tw + tx) * 3
            thumb[o], thumb[o + 1], thumb[o + 2] = r // area, g // area, b // area
    luma = sum(thumb[0::3]) * 299 + sum(thumb[1::3]) * 587 + sum(thumb[2::3]) * 114
    return {"size": (tw, th), "mean_luma": round(luma / (1000 * tw * th), 1),
            "etag": hashlib.sha1(thumb).hexdigest()[:12]}


def build_sales_report(seed: int, n_orders: int) -> dict:
    """A dashboard report: generate orders, then aggregate by region and month, top customers."""
    rng = random.Random(seed)
    regions = ("north", "south", "east", "west", "online")
    orders = [{"customer": rng.randrange(5000), "region": rng.choice(regions),
               "month": rng.randrange(1, 13), "amount": round(rng.lognormvariate(3.5, 0.8), 2),
               "items": rng.randrange(1, 9)} for _ in range(n_orders)]
    by_region: dict[str, float] = {}
    by_month: dict[int, int] = {}
    by_customer: dict[int, float] = {}
    for o in orders:
        by_region[o["region"]] = by_region.get(o["region"], 0.0) + o["amount"]
        by_month[o["month"]] = by_month.get(o["month"], 0) + o["items"]
        by_customer[o["customer"]] = by_customer.get(o["customer"], 0.0) + o["amount"]
    amounts = sorted(o["amount"] for o in orders)
    top = sorted(by_customer.items(), key=lambda kv: kv[1], reverse=True)[:10]
    return {"orders": n_orders, "revenue": round(sum(amounts), 2),
            "median_order": statistics.median(amounts),
            "p95_order": amounts[int(len(amounts) * 0.95)],
            "best_region": max(by_region, key=by_region.__getitem__),
            "busiest_month": max(by_month, key=by_month.__getitem__),
            "top_customers": [c for c, _ in top]}


def count_primes(limit: int) -> int:
    """An analytics crunch: count primes below ``limit`` by trial division, reporting progress."""
    count = 0
    step = max(1, limit // 10)
    for n in range(2, limit):
        if n % step == 0:
            report_progress(n / limit, f"{n:,} of {limit:,}")
        if n < 4:
            count += 1
            continue
        if n % 2 == 0:
            continue
        d = 3
        while d * d <= n:
            if n % d == 0:
                break
            d += 2
        else:
            count += 1
    return count


def deliver_webhook(attempts_file: str, fail_first: int, payload_seed: int) -> dict:
    """Sign and "deliver" a webhook; the receiver is down for the first ``fail_first`` attempts.

    Attempts are counted in a file (a retry may run in another worker
    process), so the failure is real and the engine's retry recovers it.
    """
    with open(attempts_file, "a+") as f:
        f.seek(0)
        attempt = len(f.read()) + 1
        f.write("x")
    body = random.Random(payload_seed).randbytes(4096)
    signature = hmac.new(b"demo-webhook-secret", body, "sha256").hexdigest()
    if attempt <= fail_first:
        raise ConnectionError(f"receiver unavailable (attempt {attempt}): 503 Service Unavailable")
    return {"attempt": attempt, "signature": signature[:16]}


def runaway_export(seconds: float) -> int:
    """An export with a bug that makes it loop for ``seconds``: its timeout_ms stops it.

    A Python loop, so the worker's TaskTimeoutError interrupts it between
    bytecodes; the worker stays alive and takes the next task.
    """
    end = time.monotonic() + seconds
    rows = 0
    while time.monotonic() < end:
        rows += 1
    return rows


def worker_pid() -> int:
    """Which process ran this (used to show that tasks ran outside the app's process)."""
    return os.getpid()
