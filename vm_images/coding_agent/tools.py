"""The coding agent's tools: bash, read, write, edit, glob, grep.

Each tool takes the model's input (a dict) and the session's working directory and
returns a :class:`ToolResult`: the text the model sees, whether it is an error, and
for file changes the old and new content (sent to the client as an ACP diff).
Standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import fnmatch
import os
import re
import shutil
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# What the model sees of long outputs: the head and the tail, in characters.
MAX_OUTPUT = 30_000
READ_LIMIT = 2000
MAX_LINE = 2000
MAX_MATCHES = 500
MAX_BASH_TIMEOUT = 600.0
# Captured bash output beyond this (bytes) keeps only its tail.
CAPTURE_LIMIT = 4 * 1024 * 1024
SKIP_DIRS = {".git", "node_modules", "__pycache__", ".venv", ".mypy_cache", ".ruff_cache"}


class ToolError(Exception):
    """A failure the model should read (bad path, ambiguous edit, ...)."""


@dataclass
class FileChange:
    path: str  # absolute
    old_text: str | None  # None: a new file
    new_text: str


@dataclass
class ToolResult:
    text: str
    is_error: bool = False
    change: FileChange | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass
class ToolContext:
    cwd: str
    bash_timeout: float = 120.0


def resolve(ctx: ToolContext, path: str) -> Path:
    if not isinstance(path, str) or not path:
        raise ToolError("path is required")
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else Path(ctx.cwd) / p


def display(ctx: ToolContext, path: Path | str) -> str:
    """A path as shown in titles: relative to the cwd when inside it."""
    try:
        return str(Path(path).relative_to(ctx.cwd))
    except ValueError:
        return str(path)


def clip(text: str, limit: int = MAX_OUTPUT) -> str:
    if len(text) <= limit:
        return text
    head, tail = limit // 3, limit - limit // 3
    skipped = len(text) - head - tail
    return f"{text[:head]}\n... [{skipped} characters omitted] ...\n{text[-tail:]}"


# -- bash ----------------------------------------------------------------------------


async def bash(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    command = args.get("command")
    if not isinstance(command, str) or not command.strip():
        raise ToolError("command is required")
    timeout = float(args.get("timeout") or ctx.bash_timeout)
    timeout = max(1.0, min(timeout, MAX_BASH_TIMEOUT))
    # Our own pipe, not asyncio's: with asyncio-owned pipes (Python 3.11) wait()
    # blocks until every holder of the pipe exits, background children included.
    rfd, wfd = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            command,
            cwd=ctx.cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=wfd,
            stderr=wfd,
            start_new_session=True,  # its own process group: timeout/cancel kill all of it
        )
    except BaseException:
        os.close(rfd)
        raise
    finally:
        os.close(wfd)
    loop = asyncio.get_running_loop()
    stream = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stream), os.fdopen(rfd, "rb", buffering=0)
    )
    buf = bytearray()

    async def pump() -> None:
        while chunk := await stream.read(65536):
            buf.extend(chunk)
            if len(buf) > CAPTURE_LIMIT:
                del buf[: len(buf) - CAPTURE_LIMIT]

    reader = asyncio.create_task(pump())
    timed_out = False
    try:
        try:
            code = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            timed_out = True
            _killpg(proc.pid)
            code = await proc.wait()
        # Background children may keep the pipe open; do not wait for them for long.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), 0.25)
    except BaseException:
        _killpg(proc.pid)
        raise
    finally:
        reader.cancel()
        transport.close()
    output = clip(buf.decode("utf-8", errors="replace"))
    if timed_out:
        head = f"Command timed out after {timeout:g}s and was killed."
    else:
        head = f"Exit code {code}."
    text = f"{head}\n{output}" if output else head
    return ToolResult(text, is_error=timed_out or code != 0, raw={"exit_code": code})


def _killpg(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


# -- files ---------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    if not path.exists():
        raise ToolError(f"{path} does not exist")
    if path.is_dir():
        raise ToolError(f"{path} is a directory")
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        raise ToolError(f"{path} is a binary file ({len(data)} bytes)")
    return data.decode("utf-8", errors="replace")


async def read(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    path = resolve(ctx, args.get("path", ""))
    offset = max(1, int(args.get("offset") or 1))
    limit = max(1, int(args.get("limit") or READ_LIMIT))
    content = await asyncio.to_thread(_read_text, path)
    lines = content.splitlines()
    chosen = lines[offset - 1 : offset - 1 + limit]
    out = []
    for number, line in enumerate(chosen, start=offset):
        if len(line) > MAX_LINE:
            line = line[:MAX_LINE] + " [line truncated]"
        out.append(f"{number:6}\t{line}")
    rest = len(lines) - (offset - 1 + len(chosen))
    if not lines:
        out.append("(empty file)")
    elif not chosen:
        out.append(f"(the file has {len(lines)} lines; offset {offset} is past the end)")
    elif rest > 0:
        out.append(f"... ({rest} more lines; read on with offset={offset + len(chosen)})")
    return ToolResult("\n".join(out), raw={"path": str(path), "lines": len(chosen)})


async def write(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    path = resolve(ctx, args.get("path", ""))
    content = args.get("content")
    if not isinstance(content, str):
        raise ToolError("content (a string) is required")

    def do() -> str | None:
        old = _read_text(path) if path.exists() else None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        return old

    old = await asyncio.to_thread(do)
    verb = "Created" if old is None else "Overwrote"
    return ToolResult(
        f"{verb} {path} ({len(content.encode())} bytes).",
        change=FileChange(str(path), old, content),
    )


def unified_diff(path: str, old: str, new: str) -> str:
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=f"a/{path}",
            tofile=f"b/{path}",
        )
    )


async def edit(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    path = resolve(ctx, args.get("path", ""))
    old_string = args.get("old_string")
    new_string = args.get("new_string")
    replace_all = bool(args.get("replace_all", False))
    if not isinstance(old_string, str) or not isinstance(new_string, str):
        raise ToolError("old_string and new_string (strings) are required")
    if old_string == "":
        raise ToolError("old_string is empty; use the write tool to create a file")
    if old_string == new_string:
        raise ToolError("old_string and new_string are the same")

    def do() -> tuple[str, str, int]:
        old = _read_text(path)
        count = old.count(old_string)
        if count == 0:
            raise ToolError(f"old_string not found in {path}")
        if count > 1 and not replace_all:
            raise ToolError(
                f"old_string occurs {count} times in {path}; include more context to make "
                "it unique, or set replace_all"
            )
        new = (
            old.replace(old_string, new_string)
            if replace_all
            else old.replace(old_string, new_string, 1)
        )
        path.write_text(new, encoding="utf-8")
        return old, new, count if replace_all else 1

    old, new, count = await asyncio.to_thread(do)
    diff = unified_diff(display(ctx, path), old, new)
    return ToolResult(
        f"Edited {path} ({count} replacement{'s' if count != 1 else ''}).\n{diff}",
        change=FileChange(str(path), old, new),
        raw={"diff": diff, "replacements": count},
    )


# -- search --------------------------------------------------------------------------


def _walk_files(root: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        found.extend(Path(dirpath) / name for name in sorted(filenames))
    return found


async def glob(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    pattern = args.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise ToolError("pattern is required")
    root = resolve(ctx, args.get("path") or ctx.cwd)
    if not root.is_dir():
        raise ToolError(f"{root} is not a directory")

    regex = re.compile(_glob_regex(pattern.lstrip("/")))

    def do() -> list[str]:
        rels = (str(path.relative_to(root)) for path in _walk_files(root))
        return [rel for rel in rels if regex.fullmatch(rel)]

    matches = await asyncio.to_thread(do)
    if not matches:
        return ToolResult(f"No files match {pattern} under {root}.")
    shown = matches[:MAX_MATCHES]
    more = f"\n... ({len(matches) - len(shown)} more)" if len(matches) > len(shown) else ""
    return ToolResult("\n".join(shown) + more, raw={"count": len(matches)})


def _glob_regex(pattern: str) -> str:
    """Path-aware glob: ``*`` stays within a directory, ``**/`` spans zero or more."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


async def grep(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    pattern = args.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise ToolError("pattern is required")
    root = resolve(ctx, args.get("path") or ctx.cwd)
    if not root.exists():
        raise ToolError(f"{root} does not exist")
    file_glob = args.get("glob")
    ignore_case = bool(args.get("ignore_case", False))
    rg = shutil.which("rg")
    if rg:
        lines = await _rg(rg, pattern, root, file_glob, ignore_case, ctx.cwd)
    else:
        lines = await asyncio.to_thread(_pygrep, pattern, root, file_glob, ignore_case, ctx)
    if not lines:
        return ToolResult(f"No matches for {pattern!r} under {root}.")
    shown = lines[:MAX_MATCHES]
    more = f"\n... ({len(lines) - len(shown)} more matches)" if len(lines) > len(shown) else ""
    return ToolResult(clip("\n".join(shown) + more), raw={"count": len(lines)})


async def _rg(
    rg: str, pattern: str, root: Path, file_glob: Any, ignore_case: bool, cwd: str
) -> list[str]:
    argv = [rg, "--line-number", "--no-heading", "--color", "never", "--max-columns", "500"]
    if ignore_case:
        argv.append("--ignore-case")
    if isinstance(file_glob, str) and file_glob:
        argv += ["--glob", file_glob]
    argv += ["--regexp", pattern, "--", str(root)]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode not in (0, 1):
        raise ToolError(err.decode(errors="replace").strip() or f"rg failed ({proc.returncode})")
    prefix = cwd.rstrip("/") + "/"
    lines = out.decode(errors="replace").splitlines()
    return [line[len(prefix) :] if line.startswith(prefix) else line for line in lines]


def _pygrep(
    pattern: str, root: Path, file_glob: Any, ignore_case: bool, ctx: ToolContext
) -> list[str]:
    try:
        regex = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as exc:
        raise ToolError(f"bad regex: {exc}") from exc
    files = [root] if root.is_file() else _walk_files(root)
    out: list[str] = []
    for path in files:
        if isinstance(file_glob, str) and file_glob and not fnmatch.fnmatch(path.name, file_glob):
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if b"\0" in data[:8192]:
            continue
        for number, line in enumerate(data.decode(errors="replace").splitlines(), 1):
            if regex.search(line):
                out.append(f"{display(ctx, path)}:{number}:{line[:500]}")
                if len(out) > MAX_MATCHES * 2:
                    return out
    return out


# -- registry ------------------------------------------------------------------------

Tool = Callable[[ToolContext, dict[str, Any]], Awaitable[ToolResult]]

TOOLS: dict[str, Tool] = {
    "bash": bash,
    "read": read,
    "write": write,
    "edit": edit,
    "glob": glob,
    "grep": grep,
}

# ACP tool kinds.
KINDS = {
    "bash": "execute",
    "read": "read",
    "write": "edit",
    "edit": "edit",
    "glob": "search",
    "grep": "search",
}

# Tools that change things: asked about in permission mode "ask".
MUTATING = {"bash", "write", "edit"}

SCHEMAS: list[dict[str, Any]] = [
    {
        "name": "bash",
        "description": (
            "Run a shell command with bash in the working directory and return its exit code "
            "and combined stdout/stderr. Use for running tests, git, builds and other CLI "
            "tools. Long output is truncated (head and tail kept). The command is killed "
            "after `timeout` seconds."
        ),
        "input_schema": {
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "The command line to run."},
                "timeout": {
                    "type": "number",
                    "description": f"Seconds until it is killed (max {MAX_BASH_TIMEOUT:g}).",
                },
            },
            "required": ["command"],
        },
    },
    {
        "name": "read",
        "description": (
            "Read a text file. Returns numbered lines (`cat -n` style). For large files "
            "pass `offset` (1-based first line) and `limit` (number of lines)."
        ),
        "input_schema": {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "File path (relative to the cwd)."},
                "offset": {"type": "integer", "minimum": 1},
                "limit": {"type": "integer", "minimum": 1},
            },
            "required": ["path"],
        },
    },
    {
        "name": "write",
        "description": "Create or overwrite a file with the given content (parents created).",
        "input_schema": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "content": {"type": "string"},
            },
            "required": ["path", "content"],
        },
    },
    {
        "name": "edit",
        "description": (
            "Replace an exact string in a file. `old_string` must occur exactly once "
            "(include surrounding lines to make it unique) unless `replace_all` is true. "
            "Returns a unified diff of the change. Read the file first."
        ),
        "input_schema": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "old_string": {"type": "string", "description": "Exact text to replace."},
                "new_string": {"type": "string", "description": "Replacement text."},
                "replace_all": {"type": "boolean", "default": False},
            },
            "required": ["path", "old_string", "new_string"],
        },
    },
    {
        "name": "glob",
        "description": (
            "Find files by glob pattern (e.g. `**/*.py`, `src/*.ts`) under `path` "
            "(default: the cwd). Returns paths relative to `path`."
        ),
        "input_schema": {
            "type": "object",
            "properties": {
                "pattern": {"type": "string"},
                "path": {"type": "string"},
            },
            "required": ["pattern"],
        },
    },
    {
        "name": "grep",
        "description": (
            "Search file contents with a regular expression under `path` (default: the "
            "cwd). Returns `file:line:text` lines. `glob` filters files (e.g. `*.py`)."
        ),
        "input_schema": {
            "type": "object",
            "properties": {
                "pattern": {"type": "string"},
                "path": {"type": "string"},
                "glob": {"type": "string"},
                "ignore_case": {"type": "boolean", "default": False},
            },
            "required": ["pattern"],
        },
    },
]


def title(ctx: ToolContext, name: str, args: dict[str, Any]) -> str:
    """A short human title for a tool call (the ACP ``tool_call`` title)."""
    try:
        if name == "bash":
            command = str(args.get("command", "")).strip().splitlines()
            first = command[0] if command else ""
            return f"`{first[:80]}{'…' if len(first) > 80 or len(command) > 1 else ''}`"
        if name in ("read", "write", "edit"):
            return f"{name.capitalize()} {display(ctx, resolve(ctx, args.get('path', '')))}"
        if name == "glob":
            return f"Glob {args.get('pattern', '')}"
        if name == "grep":
            return f"Grep {args.get('pattern', '')!r}"
    except ToolError:
        pass
    return name


def locations(ctx: ToolContext, name: str, args: dict[str, Any]) -> list[tuple[str, int | None]]:
    if name in ("read", "write", "edit") and isinstance(args.get("path"), str) and args["path"]:
        line = args.get("offset") if name == "read" else None
        return [(str(resolve(ctx, args["path"])), int(line) if line else None)]
    return []


async def run_tool(ctx: ToolContext, name: str, args: dict[str, Any]) -> ToolResult:
    """Run a tool; bad input and tool failures become error results, not exceptions."""
    tool = TOOLS.get(name)
    if tool is None:
        return ToolResult(f"Unknown tool {name!r}; available: {', '.join(TOOLS)}", is_error=True)
    if not isinstance(args, dict):
        return ToolResult("Tool input must be a JSON object", is_error=True)
    try:
        return await tool(ctx, args)
    except ToolError as exc:
        return ToolResult(str(exc), is_error=True)
    except (OSError, ValueError, UnicodeError) as exc:
        return ToolResult(f"{type(exc).__name__}: {exc}", is_error=True)
