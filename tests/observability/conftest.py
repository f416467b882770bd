"""Fixtures for the observability tests: small engines and an in-process web server."""
from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest


SMALL = dict(memory_pool_mb=16, queue_size=256, retry_backoff_base=0.01, retry_backoff_cap=0.05,
             enable_auto_scaling=False)


@pytest.fixture
def engine_defaults() -> dict:
    """make_engine (tests/conftest.py) builds test-sized engines without auto-scaling."""
    return dict(SMALL, workers=2, min_workers=1)


@pytest.fixture
def serve():
    """``serve(asgi_app) -> base URL``: uvicorn in a thread of this process, stopped at teardown.

    In-process on purpose: the engine under test stays in the test process,
    so the leak guard sees its workers, and the test can look at the engine
    it asserts the page against.
    """
    uvicorn = pytest.importorskip("uvicorn")
    servers = []

    def start(app) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        servers.append((server, thread, sock))
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread, sock in servers:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1440,1100", "--hide-scrollbars", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
