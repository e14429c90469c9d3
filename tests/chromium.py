"""Shared headless-Chromium helpers: Debian's /usr/bin/chromium driven by PyPI playwright.

A missing browser or driver FAILS the calling test with the fix in the message (never a skip)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def sync_playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright as sp
    except ImportError:
        pytest.fail("playwright is not installed: run `.venv/bin/pip install playwright` "
                    "(or `pip install -e '.[dev]'`); never `playwright install`, Debian's chromium is used")
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: run `apt-get update && apt-get install -y chromium` as root "
                    "(or `make install`)")
    return sp


@contextmanager
def guarded_page(requests: list[str], viewport: tuple[int, int] = (1000, 700)) -> Iterator[Any]:
    """A page whose every request is recorded into ``requests``; anything but file:/data: is aborted."""

    def guard(route: Any, request: Any) -> None:
        requests.append(request.url)
        if request.url.startswith(("file://", "data:")):
            route.continue_()
        else:
            route.abort()

    with sync_playwright()() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.route("**/*", guard)
            page.on("request", lambda r: requests.append(r.url))
            yield page
        finally:
            browser.close()


def external(requests: list[str]) -> list[str]:
    """The recorded requests that left the file (anything but file: and data: URLs)."""
    return [u for u in requests if not u.startswith(("file://", "data:"))]
