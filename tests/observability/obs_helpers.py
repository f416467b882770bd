"""Helpers for the observability tests (a plain module: conftest.py names clash across test dirs)."""
from __future__ import annotations

import time


def wait_until(predicate, timeout=30.0, what="condition"):
    """Poll ``predicate`` until true; fail naming ``what`` (not a timing assertion: a hang guard)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)


def worker_pids(engine) -> list[int]:
    return sorted(p.pid for p, _ in engine._backend.supervisor.snapshot())


# The page re-renders its tables every second, so reads go through one
# script call each (atomic against re-rendering) and clicks retry on a stale element.

def text(driver, element_id: str) -> str:
    return driver.execute_script(
        "const e = document.getElementById(arguments[0]); return e ? e.textContent : null;", element_id)


def page_pids(driver) -> list[int]:
    return sorted(driver.execute_script(
        "return [...document.querySelectorAll('#workers-body tr')].map(r => +r.dataset.pid);"))


def click(driver, selector: str) -> None:
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(20):
        try:
            driver.find_element("css selector", selector).click()
            return
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"{selector} kept going stale")


def updates(driver) -> int:
    return int(driver.find_element("tag name", "body").get_attribute("data-updates") or 0)


def text_of(driver, selector):
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", selector)


def field(driver, name):
    return text_of(driver, f'#detail-fields dd[data-field="{name}"]') or ""
