"""The web console's runs, run, actors and metrics pages in a real browser.

Debian's chromium (Playwright) against a live server: the test registry's
``runner`` run queues for the fast tests, the real host (Docker sandboxes with the
coding agent, the scripted fake model) for a fixBug started from the form. Nothing
is reloaded: what changes on the server must show up on the open page.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from host.server import routes_ui
from tests.support.fake_anthropic import FakeAnthropic, Turn

from .conftest import SCREENSHOTS, TOKEN, first_paint_ms, give_token

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _send(url: str, actor: str, queue: str, body: Any, key: str = "main") -> int:
    resp = httpx.post(
        f"{url}/actors/{actor}/{key}/queues/{queue}", json={"body": body}, headers=AUTH, timeout=30
    )
    assert resp.status_code == 200, resp.text
    run_id: int = resp.json()["message_id"]
    return run_id


def _run(url: str, actor: str, run_id: int, key: str = "main") -> dict[str, Any]:
    resp = httpx.get(f"{url}/actors/{actor}/{key}/runs/{run_id}", headers=AUTH, timeout=30)
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


def test_console_files_are_served_with_a_strict_policy_and_the_api_keeps_its_token(
    module_console_server,
):
    """The static files need no token and carry the CSP (the import map allowed by
    its hash, nothing else inline); paths out of src/ and vendor/ are 404; the
    run-event stream needs the token and refuses a cross-site page."""
    url = module_console_server.url
    index = httpx.get(f"{url}/ui/")
    assert index.status_code == 200, index.text
    csp = index.headers["content-security-policy"]
    assert "script-src 'self' 'sha256-" in csp and "'unsafe-inline'" not in csp.split(";")[1]
    assert "frame-ancestors 'none'" in csp and "connect-src 'self'" in csp
    assert index.headers["x-content-type-options"] == "nosniff"
    # The stylesheet is inlined: no render-blocking request before the first paint.
    assert "<style>" in index.text and 'href="src/style.css"' not in index.text
    app_js = httpx.get(f"{url}/ui/src/app.js")
    assert app_js.status_code == 200 and app_js.headers["content-type"].startswith(
        "text/javascript"
    )
    assert httpx.get(f"{url}/ui/vendor/preact.mjs").status_code == 200
    assert httpx.get(f"{url}/ui", follow_redirects=False).status_code == 308
    for path in (
        "/ui/src/%2e%2e/%2e%2e/routes_ui.py",
        "/ui/src/..%2f..%2froutes_ui.py",
        "/ui/vendor/.stamp",
        "/ui/package.json",
        "/ui/node_modules/preact/package.json",
    ):
        resp = httpx.get(f"{url}{path}")
        assert resp.status_code == 404, (path, resp.status_code, resp.text[:200])

    assert httpx.get(f"{url}/runs/events").status_code == 401
    assert httpx.get(f"{url}/runs/queues").status_code == 401
    evil = {**AUTH, "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    assert httpx.get(f"{url}/runs/queues", headers=evil).status_code == 403
    queues = httpx.get(f"{url}/runs/queues", headers=AUTH).json()["queues"]
    assert {(q["name"], q["queue"]) for q in queues} >= {("runner", "jobs"), ("runner", "slow")}
    with httpx.stream("GET", f"{url}/runs/events", headers=AUTH, timeout=30) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines) == "event: runs"
        assert next(lines).startswith('data: {"runs":[]')


def test_without_built_assets_the_console_says_how_to_build_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """No vendor/ (setup not run): /ui/ is a 503 page naming ./scripts/setup; a
    symlink in src/ pointing out of it is not followed."""
    from fastapi import FastAPI
    from starlette.testclient import TestClient

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.js").write_text("export {};\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the browser")
    (tmp_path / "src" / "link.txt").symlink_to(secret)
    (tmp_path / "index.html").write_text("<!doctype html>")
    monkeypatch.setattr(routes_ui, "UI_ROOT", tmp_path)
    app = FastAPI()
    app.include_router(routes_ui.router)
    with TestClient(app) as client:
        page = client.get("/ui/")
        assert page.status_code == 503
        assert "console assets are not built: run ./scripts/setup" in page.text
        assert "vendor/preact.mjs" in page.text
        assert client.get("/ui/src/app.js").status_code == 200
        assert client.get("/ui/src/link.txt").status_code == 404
        etag = client.get("/ui/src/app.js").headers["etag"]
        again = client.get("/ui/src/app.js", headers={"If-None-Match": etag})
        assert again.status_code == 304 and "content-security-policy" in again.headers


def test_run_event_streams_are_bounded(module_console_server):
    """At most MAX_STREAMS run-event streams at once: one more is a 429 naming the
    limit; a closed stream frees its slot."""
    from host.server.routes_run_events import MAX_STREAMS

    url = f"{module_console_server.url}/runs/events"
    with httpx.Client(headers=AUTH, timeout=30) as http:
        streams = [http.stream("GET", url) for _ in range(MAX_STREAMS)]
        opened = [s.__enter__() for s in streams]
        try:
            assert all(r.status_code == 200 for r in opened)
            extra = http.get(url)
            assert extra.status_code == 429, extra.text
            assert extra.json()["error"]["metadata"]["limit"] == MAX_STREAMS
        finally:
            for s in streams:
                s.__exit__(None, None, None)

        def reopened() -> int:
            with http.stream("GET", url) as resp:
                return resp.status_code

        # The server notices each disconnect on its own time: poll with a deadline.
        end = time.monotonic() + 30
        while reopened() != 200:
            assert time.monotonic() < end, "the closed streams' slots were never freed"
            time.sleep(0.05)


def test_runs_page_lists_runs_live_and_cancels_and_retries(console_server, page):
    """Ask for the token, print the first paint; a run sent over HTTP appears
    without a reload and goes to completed; a slow run is cancelled with its button;
    a failed run is retried; filters narrow the list; the run page shows its steps."""
    url = console_server.url
    page.goto(f"{url}/ui/#/runs")
    give_token(page)
    page.locator("#live").filter(has_text="live").wait_for()
    print(f"\nfirst paint of the runs page: {first_paint_ms(page):.0f} ms")
    page.locator("#no-runs").wait_for()

    done = _send(url, "runner", "jobs", {"label": "a"})
    row = page.locator(f"tr[data-run='{done}'][data-name='runner']")
    row.locator("[data-status=completed]").wait_for()

    slow = _send(url, "runner", "slow", {"seconds": 600})
    slow_row = page.locator(f"tr[data-run='{slow}'][data-name='runner']")
    slow_row.locator("[data-status=running]").wait_for()
    slow_row.locator("button[data-action=cancel]").click()
    slow_row.locator("[data-status=cancelled]").wait_for()
    assert _run(url, "runner", slow)["status"] == "cancelled"

    httpx.post(
        f"{url}/actors/runner/main/actions/break_work", json={"args": []}, headers=AUTH
    ).raise_for_status()
    broken = _send(url, "runner", "jobs", {"label": "b"})
    broken_row = page.locator(f"tr[data-run='{broken}'][data-name='runner']")
    broken_row.locator("[data-status=failed]").wait_for()
    assert "work is broken" in broken_row.inner_text()
    httpx.post(
        f"{url}/actors/runner/main/actions/heal", json={"args": []}, headers=AUTH
    ).raise_for_status()
    broken_row.locator("button[data-action=retry]").click()
    broken_row.locator("[data-status=completed]").wait_for()

    page.select_option("#filter-status", "cancelled")
    page.locator("#runs-table tbody tr").first.wait_for()
    assert page.locator("#runs-table tbody tr").count() == 1
    page.select_option("#filter-status", "")

    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "runs_list.png"), full_page=True)
    row.locator("a").click()
    page.locator("#run-page[data-status=completed]").wait_for()
    page.locator(".tl-row[data-step=prepare][data-status=completed]").wait_for()
    page.locator(".tl-row[data-step=work][data-status=completed]").wait_for()
    assert "done a" in page.locator("#run-page").inner_text()


def test_start_form_sends_a_run_and_bad_input_names_the_field(module_console_server, page):
    """The form lists the run queues; a slow run started from it opens its run page,
    running; the cancel button there ends it."""
    url = module_console_server.url
    page.goto(f"{url}/ui/#/runs")
    give_token(page)
    page.locator("#start-run").click()
    page.select_option("#start-kind", "queue:runner/slow")
    page.locator("#start-key").fill("formkey")
    page.locator("#start-submit").click()
    page.locator("#run-page[data-status=running]").wait_for()
    assert "formkey" in page.locator("#run-page").inner_text()
    page.locator("#run-cancel").click()
    page.locator("#run-page[data-status=cancelled]").wait_for()


def test_actors_and_metrics_pages(module_console_server, page):
    """Actors: the list, then one actor's state, queue and history; Metrics: charts
    drawn from /metrics samples."""
    url = module_console_server.url
    run_id = _send(url, "runner", "jobs", {"label": "m"})
    page.goto(f"{url}/ui/#/actors")
    give_token(page)
    page.locator("a[data-actor='runner/main']").click()
    page.locator("#actor-page").wait_for()
    page.locator("#actor-state").filter(has_text="prepared").wait_for()
    page.locator("#actor-runs").filter(has_text=f"#{run_id}").wait_for()
    page.goto(f"{url}/ui/#/metrics")
    for chart in ("runs", "inflight", "queue", "steps", "http"):
        page.locator(f"[data-testid=chart-{chart}] path.line").wait_for(state="attached")


@pytest.mark.docker
def test_fix_bug_from_the_form_live_to_completed_with_its_diff(
    console_host, fake_model: FakeAnthropic, buggy_repo: Path, page
):
    """A fixBug started from the form (a local repo with a failing test): its page
    shows the steps and the agent's transcript while it runs (the model's answer is
    held back until the page shows the prompt), then completed with the edit as a
    diff, the patch and the token usage. Sandbox text that looks like HTML stays
    text."""
    server = console_host(AGENTVM_REPO_ROOTS=str(buggy_repo.parent))
    gate = fake_model.gate()
    trap = '<img src=x onerror="window.__pwned=1">'
    fake_model.script(
        Turn.edit("calc.py", "return a - b", "return a + b", say=f"Fixing {trap}", wait_for=gate),
        Turn.text("Fixed it."),
        marker="ui-fix",
    )
    page.goto(f"{server.url}/ui/#/runs")
    give_token(page)
    page.locator("#start-run").click()
    page.locator("#start-kind").wait_for()
    assert page.locator("#start-kind").input_value() == "queue:automator/fixBug"
    page.locator("#field-repo").fill(str(buggy_repo))
    page.locator("#field-issue").fill("ui-fix: add(2, 3) returns -1")
    page.locator("#field-test_command").fill("sh test_calc.sh")
    page.locator("#start-submit").click()

    page.locator("#run-page[data-status=running]").wait_for(timeout=240_000)
    page.locator(".tl-row[data-step=clone-repo][data-status=completed]").wait_for(timeout=240_000)
    # The prompt reached the agent: the transcript shows it live, the answer held.
    page.locator("[data-testid=transcript]").filter(has_text="ui-fix").wait_for(timeout=240_000)
    threading.Thread(target=gate.set, daemon=True).start()

    page.locator("#run-page[data-status=completed]").wait_for(timeout=240_000)
    tx = page.locator("[data-testid=transcript]")
    tx.filter(has_text="Fixed it.").wait_for()
    tx.locator(".diff .add").filter(has_text="return a + b").first.wait_for()
    assert f"Fixing {trap}" in tx.inner_text()
    assert page.evaluate("window.__pwned") is None
    page.locator("#usage").wait_for()

    page.locator("#patch summary").click()
    patch = page.locator("#patch .diff")
    patch.locator(".add").filter(has_text="return a + b").first.wait_for()
    patch.locator(".del").filter(has_text="return a - b").first.wait_for()
    with page.expect_download() as got:
        page.locator("#patch-download").click()
    assert got.value.suggested_filename.endswith(".patch")
    runs = httpx.get(f"{server.url}/runs", headers=AUTH).json()["runs"]
    assert [r["status"] for r in runs if r["queue"] == "fixBug"] == ["completed"]


@pytest.mark.docker
def test_a_new_fix_bug_appears_live_and_is_cancelled_while_the_agent_works(
    console_host, fake_model: FakeAnthropic, buggy_repo: Path, page
):
    """The runs page is open; a fixBug sent over HTTP shows up without a reload and
    goes running (the model's answer never comes); its cancel button ends it:
    cancelled in the list and on the server."""
    server = console_host(AGENTVM_REPO_ROOTS=str(buggy_repo.parent))
    never = fake_model.gate()
    fake_model.script(
        Turn.edit("calc.py", "return a - b", "return a + b", wait_for=never), marker="ui-cancel"
    )
    page.goto(f"{server.url}/ui/#/runs")
    give_token(page)
    page.locator("#no-runs").wait_for()
    body = {"repo": str(buggy_repo), "issue": "ui-cancel: add", "test_command": "sh test_calc.sh"}
    run_id = _send(server.url, "automator", "fixBug", body)
    row = page.locator(f"tr[data-run='{run_id}'][data-name='automator']")
    row.locator("[data-status=running]").wait_for(timeout=240_000)
    fake_model.wait_for_requests(1, 240)  # the agent is mid-prompt
    row.locator("button[data-action=cancel]").click()
    row.locator("[data-status=cancelled]").wait_for(timeout=120_000)
    assert _run(server.url, "automator", run_id)["status"] == "cancelled"


# A DAG workflow whose steps are all skipped (their condition is false): it runs
# without a vm or an agent.
ALL_SKIPPED: dict[str, Any] = {
    "description": "every step skipped unless go",
    "params": [
        {"name": "go", "type": "boolean", "default": False},
        {"name": "label", "type": "string", "required": True, "description": "any text"},
    ],
    "steps": [
        {"id": "a", "prompt": "a {{ params.label }}", "when": {"param": "go"}},
        {"id": "b", "prompt": "b {{steps.a.text}}", "depends_on": ["a"], "when": {"param": "go"}},
    ],
}


@pytest.mark.docker
def test_a_registered_dag_workflow_is_started_from_the_form_with_its_params(console_host, page):
    """The form lists a registered workflow with its params; a required param left
    empty is refused naming it; filled in, the run starts and its page shows it
    completed (the runs of the "workflows" actor keyed by the workflow's name)."""
    server = console_host()
    resp = httpx.put(f"{server.url}/workflows/ui-skip", json=ALL_SKIPPED, headers=AUTH)
    assert resp.status_code == 200, resp.text
    page.goto(f"{server.url}/ui/#/runs")
    give_token(page)
    page.locator("#start-run").click()
    page.locator("#start-kind").wait_for()
    page.select_option("#start-kind", "workflow:ui-skip")
    page.locator("#field-label").wait_for()
    assert page.locator("#field-go").is_checked() is False
    page.locator("#start-submit").click()
    page.locator("#start-error").filter(has_text="label").wait_for()
    page.locator("#field-label").fill("from the console")
    page.locator("#start-submit").click()
    page.locator("#run-page[data-status=completed]").wait_for(timeout=120_000)
    assert "workflows · ui-skip" in page.locator("#run-page").inner_text()
    runs = httpx.get(f"{server.url}/runs", params={"name": "workflows"}, headers=AUTH).json()
    assert [r["status"] for r in runs["runs"]] == ["completed"]
