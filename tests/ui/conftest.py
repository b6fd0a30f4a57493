"""Browser-test fixtures for the web console (docs/console.md).

Debian's ``chromium`` driven by Playwright for Python (never a downloaded browser),
against a live ``agentvm serve`` in a subprocess: ``console_server`` with the test
registry (no Docker), ``console_host`` with the real host (vm actor, built-in
orchestrators, real Docker, the fake model upstream). Every test using ``page``
leaves a screenshot in ``tests/ui/screenshots/<test>.png`` (git-ignored).
U5's tests import from here: ``from .conftest import ...``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.e2e.conftest import HOST_KEY, buggy_repo, e2e_images, fake_model  # noqa: F401
from tests.server.live import LiveServer, start_server
from tests.support.docker import remove_host
from tests.support.fake_anthropic import FakeAnthropic

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
TOKEN = "console-test-token-3f9a1c"
# Longest a browser-side expectation waits (a deadline, not a sleep).
UI_TIMEOUT_MS = 60_000
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if CHROMIUM is not None:
        return
    skip = pytest.mark.skip(reason="chromium is not installed (./scripts/setup installs it)")
    for item in items:
        if item.path.is_relative_to(Path(__file__).parent):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def console_assets() -> None:
    """The vendored assets (``scripts/build-ui``; a no-op when up to date)."""
    proc = subprocess.run(
        [str(ROOT / "scripts" / "build-ui")], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, f"scripts/build-ui failed:\n{proc.stderr}"


# Per module, not per session: while Playwright's sync API is open its event loop
# counts as running, so every asyncio test after it in the same run (tests/vm/...)
# would fail with "cannot be called from a running event loop".
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context (empty local storage) and page; screenshot at the end.

    Errors the page's scripts throw fail the test (``page.errors`` lists them)."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.errors = errors
    yield pg
    SCREENSHOTS.mkdir(exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    try:
        pg.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    finally:
        context.close()
    assert not errors, f"errors thrown in the page: {errors}"


def give_token(pg: Any, token: str = TOKEN) -> None:
    """Answer the console's token dialog."""
    pg.locator("#token-input").fill(token)
    pg.locator("#token-form button[type=submit]").click()
    pg.locator("#token-form").wait_for(state="detached")


def first_paint_ms(pg: Any) -> float:
    """``first-contentful-paint`` of the page, from the browser's performance entries."""
    entries = pg.evaluate("performance.getEntriesByType('paint').map(e => [e.name, e.startTime])")
    found = dict(entries)
    return float(found.get("first-contentful-paint", found.get("first-paint", -1.0)))


@pytest.fixture
def console_server(console_assets: None, tmp_path: Path) -> Iterator[LiveServer]:
    """A live server with the test registry (``runner`` run queues; no Docker) and
    a token."""
    server = start_server(tmp_path / "console.db", token=TOKEN)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def module_console_server(
    console_assets: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """Like ``console_server``, one for a module's tests that need no empty server (a
    start-up per module, not per test)."""
    server = start_server(tmp_path_factory.mktemp("console") / "console.db", token=TOKEN)
    yield server
    server.stop()


@pytest.fixture
def console_host(
    console_assets: None,
    e2e_images: None,  # noqa: F811
    tmp_path: Path,
    fake_model: FakeAnthropic,  # noqa: F811
) -> Iterator[Callable[..., LiveServer]]:
    """``start(**settings)`` → the real host (vm actor, built-in orchestrators, real
    Docker sandboxes, the fake model upstream) with a token; its containers are
    removed after the test."""
    host_id = f"ui-{uuid.uuid4().hex[:8]}"
    servers: list[LiveServer] = []

    def start(**settings: str) -> LiveServer:
        server = start_host(tmp_path / "host.db", host_id, fake_model, **settings)
        servers.append(server)
        return server

    yield start
    stop_hosts(servers, host_id)


def start_host(db: Path, host_id: str, model: FakeAnthropic, **settings: str) -> LiveServer:
    """The real host on ``db`` with a token, the fake model as its upstream."""
    env = {
        "AGENTVM_HOST_ID": host_id,
        "AGENTVM_WARM_POOL": "0",
        "AGENTVM_REPO_ROOTS": "",
        "ANTHROPIC_BASE_URL": model.url,
        "ANTHROPIC_API_KEY": HOST_KEY,
    }
    return start_server(db, token=TOKEN, env={**env, **settings}, registry=None, deadline_s=120)


def stop_hosts(servers: list[LiveServer], host_id: str) -> None:
    """Stop the servers still running and remove the host's containers."""
    for server in servers:
        if server.proc.poll() is None:
            server.stop()
    client = docker.from_env()
    remove_host(client, host_id)
    client.close()


@pytest.fixture(scope="module")
def module_model() -> Iterator[FakeAnthropic]:
    """The fake model upstream shared by a module's tests (see ``module_host``)."""
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture(scope="module")
def module_host(
    console_assets: None,
    e2e_images: None,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
    module_model: FakeAnthropic,
) -> Iterator[LiveServer]:
    """One real host for a whole module (its tests use vm keys of their own): a host
    start-up and shutdown per module, not per test."""
    host_id = f"ui-{uuid.uuid4().hex[:8]}"
    server = start_host(tmp_path_factory.mktemp("ui-host") / "host.db", host_id, module_model)
    yield server
    stop_hosts([server], host_id)
