"""The browser tier: Debian's chromium, driven by Playwright, against real
processes (stages, an orchestrator with authentication on and two tenants'
keys, the gateway serving the workspace).

Playwright cannot download its own browser here (`playwright install` fails
without internet): the tests launch the system chromium (STAGEFLOW_CHROMIUM,
else `chromium` on PATH), headless, with its background networking off (its
update and sync connections are refused in a closed network, and slow it
down), and skip, saying so, only when there is none (`.ci/run` installs it).
Each test gets a fresh browser context (no cookie of another test) at the
1280 px width; `shoot(page, name)` writes a screenshot at 1280 and at 390 px
into STAGEFLOW_TEST_ARTIFACTS, else out/browser-artifacts/.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, ViewportSize, expect, sync_playwright

from stageflow.cli.cluster import LocalCluster
from tests.gateway_stack import Gateway, gateway_stack

REPO = Path(__file__).resolve().parents[2]
# The two widths the workspace is built for: a laptop, and a phone.
WIDE: ViewportSize = {"width": 1280, "height": 900}
NARROW: ViewportSize = {"width": 390, "height": 844}
CHROMIUM_ARGS = [
    "--no-sandbox",  # root in a container: chromium's sandbox needs user namespaces
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Playwright's default 30 s: a job's stages on the shared CPU can take longer.
TIMEOUT_MS = 120_000

Shoot = Callable[[Page, str], list[Path]]


def chromium_path() -> str | None:
    named = os.environ.get("STAGEFLOW_CHROMIUM")
    if named:
        return named if Path(named).is_file() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The real stack, once per session; the trained fixtures draw what the
    prompt says, so the screenshots show real images."""
    if chromium_path() is None:
        pytest.skip("no chromium (apt-get install chromium, or set STAGEFLOW_CHROMIUM)")
    with gateway_stack(tmp_path_factory.mktemp("browser-cluster"), models_dir=None) as gw:
        yield gw


@pytest.fixture(scope="session")
def open_stack(tmp_path_factory: pytest.TempPathFactory, stack: Gateway) -> Iterator[str]:
    """The embedded default: an orchestrator without authentication (and its
    gateway) over the stack's own stage processes and store; its URL. A few
    seconds, not a second set of stages. One job runs at a time: later ones
    wait QUEUED (the queue position test)."""
    stages = ";".join(f"{s}={stack.cluster.addresses[s]}" for s in stack.cluster.stages)
    with LocalCluster(
        state_dir=tmp_path_factory.mktemp("open-cluster"),
        stages=(),
        store_url=stack.cluster.store_url,
        # The last --stages wins.
        orchestrator_args=["--stages", stages, "--max-running-jobs", "1"],
        gateway_port=0,
    ) as cluster:
        yield cluster.gateway_url


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    path = chromium_path()
    if path is None:
        pytest.skip("no chromium (apt-get install chromium, or set STAGEFLOW_CHROMIUM)")
    # launch() gives the browser a fresh temporary profile (--user-data-dir) of its own.
    browser = playwright.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def page(browser: Browser, stack: Gateway) -> Iterator[Page]:
    """A page in a fresh context (its own cookies) with the stack's URL as base."""
    context = browser.new_context(base_url=stack.url, viewport=WIDE)
    context.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    folder = Path(os.environ.get("STAGEFLOW_TEST_ARTIFACTS") or REPO / "out" / "browser-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def shoot(artifacts: Path) -> Shoot:
    """shoot(page, name): full-page screenshots <name>-1280.png and <name>-390.png."""

    def take(page: Page, name: str) -> list[Path]:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "-", name)
        before = page.viewport_size
        written = []
        for size in (WIDE, NARROW):
            page.set_viewport_size(size)
            path = artifacts / f"{safe}-{size['width']}.png"
            page.screenshot(path=path, full_page=True)
            written.append(path)
        if before is not None:
            page.set_viewport_size(before)
        return written

    return take


def sign_in(page: Page, key: str) -> None:
    """Through the sign-in form, as a person would."""
    page.goto("/signin")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
