"""``agentvm vm ...``: a sandbox's exec, files and an interactive shell, over HTTP."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table

from orchestrator import RemoteClient
from orchestrator.keys import encode_key_path

from .cli_common import (
    DEFAULT,
    JsonOpt,
    KeyArg,
    TokenOpt,
    UrlOpt,
    check,
    clean,
    console,
    encode_key,
    from_wire,
    http_json,
    http_request,
    out,
    parse_key,
    print_json,
    raw_client,
    run_client,
    spinner,
    write_bytes,
)

vm_app = typer.Typer(no_args_is_help=True, help="Sandboxes (the vm actor): exec, files, shell.")

VM = "vm"


def _files_url(key: str, path: str, kind: str = "files") -> str:
    return f"/vms/{encode_key_path(parse_key(key))}/{kind}/{quote(path.lstrip('/'), safe='/')}"


def _show_exec(result: Any, as_json: bool) -> int:
    """Print an exec result; the process exit code to use."""
    if as_json or not isinstance(result, dict) or "exit_code" not in result:
        print_json(result)
        return int(result.get("exit_code", 0)) if isinstance(result, dict) else 0
    sys.stdout.write(result.get("stdout") or "")
    sys.stdout.flush()
    sys.stderr.write(result.get("stderr") or "")
    sys.stderr.flush()
    if result.get("timed_out"):
        console.print("[yellow](timed out)[/]")
    return int(result["exit_code"])


# ``vm exec`` without ``--cwd`` runs here when it is a directory (the repository the
# built-in orchestrators work on, orchestrator.builtin.REPO_DIR), else in the vm's own
# default (/home/user): ``agentvm vm exec fix-7 -- git diff`` shows the fix's diff.
EXEC_DEFAULT_CWD = "/home/user/repo"


def _vm_action(url: str, token: str | None, key: str, action: str, *args: Any) -> Any:
    """One action of the vm (get-or-create), over the standard-library client."""
    path = f"/actors/{VM}/{encode_key(parse_key(key))}/actions/{action}"
    return from_wire(http_json(url, token, "POST", path, body={"args": list(args)})["output"])


def _default_cwd(url: str, token: str | None, key: str) -> str | None:
    """``EXEC_DEFAULT_CWD`` if the vm has that directory; None: the vm's default."""
    path = f"/actors/{VM}/{encode_key(parse_key(key))}/actions/stat"
    status, raw = http_request(url, token, "POST", path, body={"args": [EXEC_DEFAULT_CWD]})
    if status >= 400:  # no such directory (or a vm without ``stat``): the vm's default
        return None
    try:
        output = json.loads(raw).get("output")
    except (ValueError, AttributeError):
        return None
    return EXEC_DEFAULT_CWD if isinstance(output, dict) and output.get("type") == "dir" else None


@vm_app.command("exec", context_settings={"allow_extra_args": False})
def vm_exec(
    key: KeyArg,
    command: Annotated[list[str], typer.Argument(help="the command (after --)")],
    cwd: Annotated[
        str | None,
        typer.Option(
            help=f"working directory in the sandbox (default: {EXEC_DEFAULT_CWD} if it "
            "exists, else /home/user)"
        ),
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="seconds before it is killed")] = None,
    url: UrlOpt = DEFAULT,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a command in a sandbox: ``agentvm vm exec fix-42 -- git status``.

    One argument is a shell command line; several are joined with shell quoting. It
    runs in ``--cwd``, by default in /home/user/repo when the vm has it (else
    /home/user)."""
    line = command[0] if len(command) == 1 else shlex.join(command)
    opts: dict[str, Any] = {}
    where = cwd or _default_cwd(url, token, key)
    if where:
        opts["cwd"] = where
    if timeout is not None:
        opts["timeout"] = timeout
    with spinner(f"running in vm {key}..."):
        result = _vm_action(url, token, key, "exec", line, *([opts] if opts else []))
    raise typer.Exit(_show_exec(result, as_json))


def _mode(entry: dict[str, Any]) -> str:
    """``drwxr-xr-x`` from the entry's type and permission bits, as ``ls -l`` prints."""
    kind = {"dir": "d", "symlink": "l", "file": "-"}.get(str(entry.get("type")), "?")
    mode = entry.get("mode")
    if not isinstance(mode, int):
        return kind + "?" * 9
    bits = "".join(c if mode & (1 << (8 - i)) else "-" for i, c in enumerate("rwxrwxrwx"))
    return kind + bits


def _mtime(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M")


def ls_lines(entries: list[dict[str, Any]]) -> str:
    """Entries as ``ls -l`` lines: mode, size, modification time (local), name."""
    rows = [
        (_mode(e), str(e.get("size", "")), _mtime(e.get("mtime")), clean(str(e.get("name", ""))))
        for e in entries
    ]
    size_w = max(len(r[1]) for r in rows)
    return "".join(f"{m} {s.rjust(size_w)} {t} {n}\n" for m, s, t, n in rows)


@vm_app.command("ls")
def vm_ls(
    key: KeyArg,
    path: Annotated[str, typer.Argument(help="directory in the sandbox")] = "/home/user",
    url: UrlOpt = DEFAULT,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List a directory of a sandbox (``ls -l`` style; ``--json``: the vm's entries)."""
    where = f"/vms/{encode_key(parse_key(key))}/ls/{quote(path.lstrip('/'), safe='/')}"
    listing = http_json(url, token, "GET", where)
    entries = listing.get("entries") if isinstance(listing, dict) else None
    if as_json:
        print_json(listing)
    elif isinstance(entries, list) and all(isinstance(e, dict) for e in entries):
        if entries:
            write_bytes(ls_lines(entries).encode())
    else:
        print_json(entries)


@vm_app.command("cat")
def vm_cat(
    key: KeyArg,
    path: Annotated[str, typer.Argument(help="file in the sandbox")],
    url: UrlOpt = DEFAULT,
    token: TokenOpt = None,
) -> None:
    """Print a file of a sandbox (raw bytes to stdout)."""

    async def go(_: RemoteClient) -> bytes:
        async with raw_client(url, token) as http:
            return check(await http.get(_files_url(key, path))).content

    write_bytes(run_client(url, token, go))


@vm_app.command("put")
def vm_put(
    key: KeyArg,
    path: Annotated[str, typer.Argument(help="destination file in the sandbox")],
    source: Annotated[str, typer.Argument(help="local file ('-' reads stdin)")] = "-",
    url: UrlOpt = DEFAULT,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload a local file (or stdin) into a sandbox."""
    data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()

    async def go(_: RemoteClient) -> Any:
        async with raw_client(url, token) as http:
            with spinner(f"uploading {len(data)} bytes..."):
                return check(await http.put(_files_url(key, path), content=data)).json()

    written = run_client(url, token, go)
    if as_json:
        print_json(written)
    else:
        console.print(f"wrote {written['size']} bytes to {written['path']}")


@vm_app.command("shell")
def vm_shell(
    key: KeyArg,
    cwd: Annotated[str, typer.Option(help="starting directory")] = "/home/user",
    terminal: Annotated[
        str | None, typer.Option("--terminal", help="re-attach to this running terminal")
    ] = None,
    url: UrlOpt = DEFAULT,
    token: TokenOpt = None,
) -> None:
    """An interactive shell in a sandbox. On a terminal: a real one (raw mode, a login
    shell on a pty in the vm; it keeps running if you disconnect, ``--terminal ID``
    re-attaches). Otherwise (stdin not a tty) each line runs through ``exec`` in the
    current directory (``cd`` is remembered; ``exit`` or Ctrl-D leaves): shell
    variables and background jobs do not carry over between lines."""
    if sys.stdin.isatty() and sys.stdout.isatty():
        from .cli_terminal import run_terminal

        raise typer.Exit(run_terminal(url, token, key, terminal=terminal, cwd=cwd))

    async def go(client: RemoteClient) -> None:
        handle = client[VM].get_or_create(parse_key(key))
        here = cwd
        interactive = sys.stdin.isatty()
        while True:
            prompt = f"{key}:{here}$ " if interactive else ""
            try:
                line = await asyncio.to_thread(input, prompt)
            except EOFError:
                break
            line = line.strip()
            if not line:
                continue
            if line in ("exit", "logout"):
                break
            words = shlex.split(line) if line.startswith("cd") else []
            if words and words[0] == "cd" and len(words) <= 2:
                target = words[1] if len(words) == 2 else "/home/user"
                res = await handle.exec(f"cd {shlex.quote(target)} && pwd", cwd=here)
                if isinstance(res, dict) and res.get("exit_code") == 0:
                    here = str(res.get("stdout", "")).strip() or here
                else:
                    _show_exec(res, False)
                continue
            _show_exec(await handle.exec(line, cwd=here), False)

    run_client(url, token, go)


# -- workspace checkpoints (host/vm/actions_checkpoints.py) ----------------------------


@vm_app.command("checkpoint")
def vm_checkpoint(
    key: KeyArg,
    name: Annotated[str, typer.Argument(help="checkpoint name: [A-Za-z0-9._-]{1,64}")],
    url: UrlOpt = DEFAULT,
    token: TokenOpt = None,
) -> None:
    """Save the vm's /home/user and its session records as checkpoint NAME."""

    async def go(client: RemoteClient) -> Any:
        with spinner(f"checkpointing vm {key}..."):
            return await client[VM].get_or_create(parse_key(key)).call("checkpoint", name)

    print_json(run_client(url, token, go))


@vm_app.command("restore")
def vm_restore(
    key: KeyArg,
    name: Annotated[str, typer.Argument(help="checkpoint name")],
    url: UrlOpt = DEFAULT,
    token: TokenOpt = None,
) -> None:
    """Bring /home/user and the session records back to checkpoint NAME (sessions close)."""

    async def go(client: RemoteClient) -> Any:
        with spinner(f"restoring vm {key}..."):
            return await client[VM].get(parse_key(key)).call("restore", name)

    print_json(run_client(url, token, go))


@vm_app.command("fork")
def vm_fork(
    key: KeyArg,
    new_key: Annotated[str, typer.Argument(help="key of the new vm")],
    checkpoint: Annotated[
        str | None, typer.Option(help="checkpoint to start from (default: one taken now)")
    ] = None,
    url: UrlOpt = DEFAULT,
    token: TokenOpt = None,
) -> None:
    """Create vm NEW_KEY with the same options, starting from a checkpoint of KEY."""
    opts = {"checkpoint": checkpoint} if checkpoint else {}

    async def go(client: RemoteClient) -> Any:
        with spinner(f"forking vm {key} into {new_key}..."):
            return await client[VM].get(parse_key(key)).call("fork", new_key, **opts)

    print_json(run_client(url, token, go))


@vm_app.command("checkpoints")
def vm_checkpoints(
    key: KeyArg, url: UrlOpt = DEFAULT, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """List the vm's checkpoints, oldest first."""

    async def go(client: RemoteClient) -> Any:
        return await client[VM].get(parse_key(key)).call("list_checkpoints")

    entries = run_client(url, token, go)
    if as_json or not isinstance(entries, list):
        print_json(entries)
        return
    table = Table(show_edge=False)
    for column in ("name", "created_at", "size", "sha256"):
        table.add_column(column)
    for e in entries:
        table.add_row(e["name"], str(e["created_at"]), str(e["size"]), e["sha256"][:16])
    out.print(table)


from . import cli_ports  # noqa: E402, F401  (registers `vm ports` and `vm open`)
