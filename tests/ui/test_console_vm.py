"""The console's VM pages in a real browser (Debian's chromium through Playwright)
against the real host (Docker sandboxes, a token): the file tree and viewer, live
refresh through the watch, upload, the terminal on ``WS /vms/{key}/pty`` and its
re-attach after a reload, a port's preview, the vms list, and sandbox-chosen names
and contents shown as text, never as HTML."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.server.live import LiveServer
from tests.support.fake_anthropic import FakeAnthropic, Turn

from .conftest import TOKEN, give_token

AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOSTILE = "<img src=x onerror=alert(1)>"
SCRIPT = "<script>alert(2)</script>"
# The text of the page's xterm.js buffer (scroll-back included), one line per row.
XTERM_TEXT = """() => {
  const el = document.querySelector('.vm-terminal');
  const t = el && el.xterm;
  if (!t) return '';
  const b = t.buffer.active, out = [];
  for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));
  return out.join('\\n');
}"""


def call(base: str, key: str, action: str, *args: Any) -> Any:
    resp = httpx.post(
        f"{base}/actors/vm/{key}/actions/{action}",
        json={"args": list(args)},
        headers=AUTH,
        timeout=180,
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["output"]


def sh(base: str, key: str, script: str) -> None:
    out = call(base, key, "exec", script)
    assert out["exit_code"] == 0, out


def open_vm_page(page: Any, base: str, key: str) -> None:
    """The VM page, the token given when it asks (a fresh browser context)."""
    page.goto(f"{base}/ui/#/vms/{key}")
    give_token(page)
    page.locator(".vm-info .vm-status").wait_for()


def terminal_has_line(page: Any, line: str) -> None:
    page.wait_for_function(
        f"(want) => ({XTERM_TEXT})().split('\\n').some(l => l.trim() === want)", arg=line
    )


@pytest.fixture
def host(module_host: LiveServer) -> LiveServer:
    """The module's one real host: each test here uses vm keys of its own."""
    return module_host


def test_file_tree_viewer_watch_upload_and_hostile_names(host: LiveServer, page: Any) -> None:
    base, key = host.url, "ui-files"
    sh(
        base,
        key,
        "mkdir -p /home/user/proj && "
        f"printf 'def hello():\\n    return 42  # {SCRIPT}\\n' > /home/user/proj/hello.py && "
        f"touch '/home/user/{HOSTILE}'",
    )
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    open_vm_page(page, base, key)

    # The tree, a lazily listed directory, a file with syntax highlighting.
    page.locator('.vm-tree-entry[data-path="/home/user/proj"]').click()
    page.locator('.vm-tree-entry[data-path="/home/user/proj/hello.py"]').click()
    code = page.locator(".vm-file-content code")
    code.filter(has_text="return 42").wait_for()
    assert code.locator(".hljs-keyword").count() >= 1  # highlighted: def, return
    # The file's markup is text in the viewer, not an element.
    assert SCRIPT in code.inner_text()
    assert page.locator(".vm-file-content script").count() == 0
    with page.expect_download() as download:
        page.locator(".vm-download").click()
    assert download.value.suggested_filename == "hello.py"
    with open(download.value.path(), "rb") as f:
        assert f.read() == f"def hello():\n    return 42  # {SCRIPT}\n".encode()

    # A name chosen in the sandbox is a text node: no <img>, no handler ran.
    hostile = page.locator(f'.vm-tree-entry[data-path="/home/user/{HOSTILE}"]')
    hostile.wait_for()
    assert hostile.locator(".vm-tree-name").inner_text() == HOSTILE
    assert page.locator(".vm-page img").count() == 0
    hostile.click()  # viewed too (empty), and /home/user is now the upload target
    page.locator(f'.vm-file[data-path="/home/user/{HOSTILE}"]').wait_for()

    # A file created in the sandbox appears in the open directory: the watch (once
    # the page says it follows it).
    page.locator('.vm-watch[data-watch="on"]').wait_for()
    sh(base, key, "echo fresh > /home/user/proj/created.txt")
    page.locator('.vm-tree-entry[data-path="/home/user/proj/created.txt"]').wait_for()

    # Upload into the selected directory; the sandbox has the bytes.
    page.locator(".vm-upload input[type=file]").set_input_files(
        files=[{"name": "up.txt", "mimeType": "text/plain", "buffer": b"uploaded \x00 bytes"}]
    )
    page.locator('.vm-tree-entry[data-path="/home/user/up.txt"]').wait_for()
    got = httpx.get(f"{base}/vms/{key}/files/home/user/up.txt", headers=AUTH, timeout=30)
    assert got.status_code == 200 and got.content == b"uploaded \x00 bytes"
    page.locator('.vm-tree-entry[data-path="/home/user/up.txt"]').click()
    page.locator(".vm-file .vm-note", has_text="binary file").wait_for()
    assert dialogs == []


def test_terminal_echo_and_reattach_after_reload(host: LiveServer, page: Any) -> None:
    base, key = host.url, "ui-term"
    call(base, key, "start")
    open_vm_page(page, base, key)
    status = page.locator('.vm-terminal-status[data-status="attached"]')
    status.wait_for()
    terminal_id = page.locator(".vm-terminal").get_attribute("data-terminal")
    assert terminal_id

    page.locator(".vm-terminal").click()
    page.keyboard.type("echo hi")
    page.keyboard.press("Enter")
    terminal_has_line(page, "hi")

    # A reload re-attaches to the same shell (the id is in sessionStorage, the token
    # in localStorage) and the server replays the scroll-back before anything is typed.
    page.reload()
    status.wait_for()
    assert page.locator(".vm-terminal").get_attribute("data-terminal") == terminal_id
    terminal_has_line(page, "hi")
    page.locator(".vm-terminal").click()
    page.keyboard.type("echo again-$((40+2))")
    page.keyboard.press("Enter")
    terminal_has_line(page, "again-42")

    # Several terminals per vm: a second one, then back to the first (its scroll-back
    # again), then the first closed (hung up in the sandbox).
    terminal = page.locator(".vm-terminal")
    page.locator(".vm-terminal-new").click()
    page.wait_for_function(
        "(old) => { const el = document.querySelector('.vm-terminal');"
        " return el && el.dataset.terminal && el.dataset.terminal !== old; }",
        arg=terminal_id,
    )
    status.wait_for()
    second = terminal.get_attribute("data-terminal")
    page.locator(f'.vm-terminal-tab[data-terminal="{terminal_id}"]').click()
    page.wait_for_function(
        "(want) => document.querySelector('.vm-terminal').dataset.terminal === want",
        arg=terminal_id,
    )
    status.wait_for()
    terminal_has_line(page, "again-42")
    page.locator(".vm-terminal-close").click()
    page.locator(f'.vm-terminal-tab[data-terminal="{terminal_id}"]').wait_for(state="detached")
    running = [t["id"] for t in call(base, key, "list_terminals") if t["running"]]
    assert terminal_id not in running and second in running


def test_preview_of_a_server_in_the_sandbox_from_the_ports_list(
    host: LiveServer, page: Any
) -> None:
    base, key = host.url, "ui-ports"
    sh(
        base,
        key,
        "mkdir -p /home/user/site && echo '<h1>preview works</h1>' > /home/user/site/index.html",
    )
    call(base, key, "spawn", "python3 -m http.server 8000", {"cwd": "/home/user/site"})
    open_vm_page(page, base, key)
    # Ports are listed on demand: refresh until the server listens (a deadline).
    port = page.locator('.vm-ports li[data-port="8000"]')
    page.wait_for_function(
        """() => {
          if (document.querySelector('.vm-ports li[data-port="8000"]')) return true;
          document.querySelector('.vm-ports-refresh').click();
          return false;
        }""",
        polling=500,
    )
    link = port.locator("a")
    assert link.get_attribute("target") == "_blank"
    assert "noopener" in (link.get_attribute("rel") or "")
    with page.context.expect_page() as opened:
        link.click()
    preview = opened.value
    preview.locator("h1", has_text="preview works").wait_for()
    preview.close()


def test_vms_list_create_and_destroy(host: LiveServer, page: Any) -> None:
    base = host.url
    page.on("dialog", lambda d: d.accept())  # the destroy confirmation
    page.goto(f"{base}/ui/#/vms")
    give_token(page)
    page.locator(".vm-create input[name=key]").fill("ui-made")
    page.locator(".vm-create button[type=submit]").click()
    row = page.locator('tr[data-vm="ui-made"]')
    row.locator(".vm-status", has_text="running").wait_for()
    info = call(base, "ui-made", "info")
    assert info["status"] == "running" and info["image"]
    row.locator("a").click()
    page.locator('.vm-page[data-vm="ui-made"]').wait_for()
    page.go_back()
    row.locator("button", has_text="Destroy").click()
    row.wait_for(state="detached")
    got = httpx.get(f"{base}/actors/vm/ui-made", headers=AUTH, timeout=30)
    assert got.status_code == 404, got.text


def test_a_websocket_token_travels_as_a_subprotocol_and_a_wrong_one_is_refused(
    host: LiveServer,
) -> None:
    """What the console's terminal relies on (a browser cannot set headers on a
    WebSocket), from the attacker's side too: a guessed token is refused at the
    handshake, and the right one is stripped before the route sees it."""
    base = host.url
    ws_base = base.replace("http://", "ws://")
    call(base, "ui-ws", "start")

    def offer(token: str) -> list[Any]:
        encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
        return ["agentvm", f"agentvm.bearer.{encoded}"]

    for bad in ("wrong-token", TOKEN + "x", ""):
        with pytest.raises(InvalidStatus) as refused:
            connect(f"{ws_base}/vms/ui-ws/pty", subprotocols=offer(bad), open_timeout=30)
        assert refused.value.response.status_code == 403
    with connect(f"{ws_base}/vms/ui-ws/pty", subprotocols=offer(TOKEN), open_timeout=60) as ws:
        assert ws.subprotocol == "agentvm"
        first = ws.recv(timeout=60)
        assert isinstance(first, str) and '"attached"' in first


def test_sessions_and_processes_show_the_sandbox_s_text_as_text(
    host: LiveServer, page: Any, module_model: FakeAnthropic
) -> None:
    """An agent session's events and a process's argv are the sandbox's words: the
    page lists them, and markup in them stays text."""
    base, key = host.url, "ui-sessions"
    module_model.script(Turn.text(f"agent says {HOSTILE}"), marker="[ui]")
    sid = call(base, key, "create_session", "coding-agent")["session_id"]
    answer = call(base, key, "send_prompt", sid, "[ui] hello")
    assert HOSTILE in answer["text"]
    pid = call(base, key, "spawn", ["bash", "-c", "sleep 600", HOSTILE])["pid"]
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    open_vm_page(page, base, key)

    session = page.locator(f'.vm-sessions li[data-session="{sid}"]')
    session.locator("button.vm-link").click()
    session.locator(".vm-session-events li", has_text="agent says").first.wait_for()
    assert HOSTILE in session.locator(".vm-session-events").inner_text()

    row = page.locator(f'.vm-processes tr[data-pid="{pid}"]')
    row.wait_for()
    assert HOSTILE in row.locator(".vm-argv").inner_text()
    row.locator("button", has_text="Kill").click()
    row.locator("td", has_text="exit").wait_for()  # refreshed after the kill
    assert page.locator(".vm-page img").count() == 0
    assert dialogs == []


def test_a_crafted_vm_key_in_the_address_reaches_no_other_route(
    console_server: LiveServer, page: Any
) -> None:
    """The key comes from the address, which anyone can link to: a key that would
    climb out of /vms/<key>/... (a slash, a dot segment) is refused before any call
    is built from it; a vm that does not exist says so and creates nothing."""
    base = console_server.url
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    for crafted in ("..", "x%2F..%2F..%2Factors%2Fcounter%2Fk", "a%3Fb", "a%23b"):
        page.goto(f"{base}/ui/#/vms/{crafted}")
        page.locator(".vm-error", has_text="not a vm key").wait_for()
    assert not [u for u in requests if "/actors" in u or "/vms/" in u], requests
    page.goto(f"{base}/ui/#/vms/nobody-here")
    give_token(page)
    page.locator(".vm-error").wait_for()
    listed = httpx.get(f"{base}/actors", params={"name": "vm"}, headers=AUTH, timeout=30)
    assert listed.status_code == 200 and listed.json()["actors"] == []
