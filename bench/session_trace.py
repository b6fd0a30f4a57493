"""``bench/sessions.py --syscalls``: where a turn's time goes inside the sandbox too.

The host-side hop stamps (``--hops``) cannot see the supervisor, the agent or the
fake model. This records their system calls with ``perf record`` (tracepoints
``raw_syscalls:sys_enter/exit``, timestamps on ``CLOCK_MONOTONIC``: the clock of
``time.perf_counter_ns()``, shared by every process of the machine, containers
included) while the turns run, and finds in each turn (between the host's
``mgr_in`` and ``mgr_out`` stamps) the calls that start and end each hop:

- supervisor: the read of its host link before it writes the prompt to the agent's
  stdin pipe; the reads of the agent's stdout pipe and the link writes after them;
- agent: the read of the prompt (stdin), its first write of the model request (the
  gateway socket), its last read of the answer, its writes to stdout;
- fake model: the request read, the first and last writes of the answer.

Needs ``perf`` and root (or ``perf_event_paranoid`` <= 1); without them the figure
is left out with the reason. ``perf`` costs ~1-2 µs per system call of the traced
processes, so the traced turns are a little slower than untraced ones.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import statistics
import tempfile
from pathlib import Path
from typing import Any

READ = {0, 17, 19, 45, 47, 295}  # read, pread64, readv, recvfrom, recvmsg, preadv
WRITE = {1, 18, 20, 44, 46, 296}  # write, pwrite64, writev, sendto, sendmsg, pwritev
_ENTER = re.compile(r"^\s*(\d+)\s+(\d+\.\d+):\s+raw_syscalls:sys_enter:\s+NR (\d+) \(([0-9a-f]+)")
_EXIT = re.compile(r"^\s*(\d+)\s+(\d+\.\d+):\s+raw_syscalls:sys_exit:\s+NR (\d+) = (-?\d+)")
_SWITCH = re.compile(r"^\s*(\d+)\s+(\d+\.\d+):\s+PERF_RECORD_SWITCH (IN|OUT)\s*(preempt)?")

# (name, from, to): the p50 (µs) of each, in turn order.
HOPS = [
    ("host_dispatch", "call_in", "mgr_in"),  # vm.send_prompt -> actor -> SessionManager
    ("host_prompt", "mgr_in", "stdin_call"),  # prompt event stored, ACP request built
    ("host_to_supervisor", "stdin_call", "sup_recv"),  # write_stdin frame, link socket
    ("supervisor_in", "sup_recv", "sup_write_stdin"),  # frame -> the agent's stdin pipe
    ("pipe_to_agent", "sup_write_stdin", "agent_read"),  # the agent process wakes
    ("agent_request", "agent_read", "agent_send"),  # ACP, prompt handler, model request
    ("gateway_in", "agent_send", "gw_fwd"),  # gateway reads the request, routes it
    ("gateway_to_fake", "gw_fwd", "fake_read"),  # httpx -> the fake model's socket
    ("fake_answer", "fake_read", "fake_last_write"),  # the fake model (direct pays it)
    ("gateway_relay", "fake_last_write", "agent_last_recv"),  # relayed to the agent
    ("agent_answer", "agent_last_recv", "agent_last_out"),  # SDK parse, updates, answer
    ("pipe_to_supervisor", "agent_last_out", "sup_send"),  # supervisor reads, frames it
    ("supervisor_to_host", "sup_send", "answer"),  # the host reads the frame
    ("host_answer", "answer", "mgr_out"),  # events stored (one commit), ACP client
    ("host_return", "mgr_out", "call_out"),  # the action's result to the caller
]


class Call:
    __slots__ = ("enter", "exit", "fd", "nr", "ret", "tid")

    def __init__(self, tid: int, nr: int, fd: int, enter: int) -> None:
        self.tid, self.nr, self.fd, self.enter = tid, nr, fd, enter
        self.ret = 0
        self.exit = enter


def _fds(pid: int) -> dict[int, str]:
    out = {}
    for entry in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(entry)] = os.readlink(f"/proc/{pid}/fd/{entry}")
        except OSError:
            continue
    return out


def _tids(pid: int) -> set[int]:
    return {int(t) for t in os.listdir(f"/proc/{pid}/task")}


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in os.listdir(f"/proc/{p}/task"):
            try:
                kids = Path(f"/proc/{p}/task/{task}/children").read_text().split()
            except OSError:
                continue
            for kid in map(int, kids):
                out.append(kid)
                todo.append(kid)
    return out


def _ns_pid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return pid


class SyscallTrace:
    """perf record of the supervisor, the agent and the fake model during the turns."""

    def __init__(self, supervisor: int, agent: int, fake: int) -> None:
        self.pids = {"host": os.getpid(), "sup": supervisor, "agent": agent, "fake": fake}
        # The pipes between supervisor and agent, by inode (seen from both ends).
        agent_fds = _fds(agent)
        self.agent_stdin, self.agent_stdout = agent_fds.get(0), agent_fds.get(1)
        sup_fds = _fds(supervisor)
        self.sup_to_agent = {fd for fd, t in sup_fds.items() if t == self.agent_stdin}
        self.sup_from_agent = {fd for fd, t in sup_fds.items() if t == self.agent_stdout}
        self.sup_sockets = {fd for fd, t in sup_fds.items() if t.startswith("socket:")}
        self.tids = {name: _tids(pid) for name, pid in self.pids.items()}
        self.dir = tempfile.mkdtemp(prefix="agentvm-perf-")
        self.proc: asyncio.subprocess.Process | None = None

    @classmethod
    def unavailable(cls) -> str | None:
        if shutil.which("perf") is None:
            return "perf is not installed"
        if os.geteuid() != 0:
            paranoid = Path("/proc/sys/kernel/perf_event_paranoid").read_text().strip()
            if int(paranoid) > 1:
                return f"not root and perf_event_paranoid={paranoid}"
        return None

    @classmethod
    def find_agent(cls, supervisor: int, sandbox_pid: int) -> int:
        """The host pid of the sandbox process ``sandbox_pid`` under the supervisor."""
        for pid in _descendants(supervisor):
            if _ns_pid(pid) == sandbox_pid:
                return pid
        raise RuntimeError(f"no process {sandbox_pid} under the supervisor ({supervisor})")

    async def start(self) -> None:
        self.tids = {name: _tids(pid) for name, pid in self.pids.items()}
        pids = ",".join(str(p) for p in self.pids.values())
        self.proc = await asyncio.create_subprocess_exec(
            "perf", "record", "-q", "-k", "CLOCK_MONOTONIC", "--switch-events",
            "-e", "raw_syscalls:sys_enter", "-e", "raw_syscalls:sys_exit",
            "-p", pids, "-o", f"{self.dir}/perf.data",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await asyncio.sleep(0.5)  # perf attaches to every thread before the turns

    async def stop(self) -> tuple[list[Call], list[Slice]]:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        _, err = await self.proc.communicate()
        script = await asyncio.create_subprocess_exec(
            "perf", "script", "-i", f"{self.dir}/perf.data", "-F", "tid,time,event,trace",
            "--ns", "--show-switch-events",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = await script.communicate()
        shutil.rmtree(self.dir, ignore_errors=True)
        if not out:
            raise RuntimeError(f"perf recorded nothing: {err.decode(errors='replace')[-500:]}")
        text = out.decode(errors="replace")
        return _calls(text), _slices(text)

    def stamps(self, calls: list[Call], row: dict[str, int]) -> dict[str, int]:
        """The in-sandbox and fake stamps of one turn (``row``: the host's)."""
        lo, hi = row["mgr_in"], row["mgr_out"]
        # (the fake model's threads block in recv: a call may start before the turn)
        window = [c for c in calls if c.exit >= lo and c.enter <= hi]
        sup = [c for c in window if c.tid in self.tids["sup"]]
        agent = [c for c in window if c.tid in self.tids["agent"]]
        fake = [c for c in window if c.tid in self.tids["fake"]]
        out: dict[str, int] = {}
        w = _first(sup, lambda c: c.nr in WRITE and c.fd in self.sup_to_agent)
        if w is None:
            return out
        out["sup_write_stdin"] = w.enter
        r = _last(sup, lambda c: c.nr in READ and c.fd in self.sup_sockets and c.ret > 0, w.enter)
        if r is not None:
            out["sup_recv"] = r.exit
        a = _first(agent, lambda c: c.nr in READ and c.fd == 0 and c.ret > 0, w.enter)
        if a is None:
            return out
        out["agent_read"] = a.exit
        s = _first(agent, lambda c: c.nr in WRITE and c.fd > 2, a.exit)
        if s is None:
            return out
        out["agent_send"] = s.enter
        outs = [c for c in agent if c.nr in WRITE and c.fd == 1 and c.enter > s.enter]
        if not outs:
            return out
        last_out = outs[-1]
        out["agent_last_out"] = last_out.enter
        first_out = outs[0]
        rl = _last(agent, lambda c: c.nr in READ and c.fd == s.fd and c.ret > 0, first_out.enter)
        if rl is not None:
            out["agent_last_recv"] = rl.exit
        sr = _first(sup, lambda c: c.nr in READ and c.fd in self.sup_from_agent, last_out.enter)
        if sr is not None:
            ss = _first(sup, lambda c: c.nr in WRITE and c.fd in self.sup_sockets, sr.exit)
            if ss is not None:
                out["sup_send"] = ss.enter
        fwd = row.get("gw_fwd", lo)
        fr = next((c for c in fake if c.nr in READ and c.ret > 0 and c.exit >= fwd), None)
        if fr is not None:
            out["fake_read"] = fr.exit
            fw = [c for c in fake if c.nr in WRITE and c.enter > fr.exit]
            if fw:
                out["fake_last_write"] = fw[-1].enter
        return out


class Slice:
    """A thread on a CPU from ``start`` to ``end``; ``waited``: runnable but not
    running (preempted) right before it, in ns."""

    __slots__ = ("end", "start", "tid", "waited")

    def __init__(self, tid: int, start: int, end: int, waited: int) -> None:
        self.tid, self.start, self.end, self.waited = tid, start, end, waited


def _slices(text: str) -> list[Slice]:
    on: dict[int, int] = {}
    preempted: dict[int, int] = {}
    out: list[Slice] = []
    for line in text.splitlines():
        m = _SWITCH.match(line)
        if not m:
            continue
        tid, at = int(m[1]), round(float(m[2]) * 1e9)
        if m[3] == "IN":
            on[tid] = at
        elif tid in on:
            start = on.pop(tid)
            waited = start - preempted.pop(tid, start)
            out.append(Slice(tid, start, at, waited))
            if m[4]:
                preempted[tid] = at
    return out


def cpu(trace: SyscallTrace, slices: list[Slice], row: dict[str, int]) -> dict[str, int]:
    """CPU time (ns) each process used in one turn (``call_in`` .. ``call_out``), and
    the time its threads were preempted (runnable, waiting for a CPU)."""
    lo, hi = row["call_in"], row["call_out"]
    out: dict[str, int] = {}
    for name, tids in trace.tids.items():
        used = waited = 0
        for sl in slices:
            if sl.tid in tids and sl.end > lo and sl.start < hi:
                used += min(sl.end, hi) - max(sl.start, lo)
                if sl.start >= lo:
                    waited += sl.waited
        out[f"cpu_{name}"] = used
        out[f"preempted_{name}"] = waited
    return out


def cpu_table(rows: list[dict[str, int]]) -> dict[str, int]:
    """p50 (µs) per turn of each process's CPU time and preempted time."""
    keys = sorted({k for r in rows for k in r if k.startswith(("cpu_", "preempted_"))})
    return {k: round(statistics.median(r.get(k, 0) for r in rows) / 1000) for k in keys}


def _calls(text: str) -> list[Call]:
    open_calls: dict[int, Call] = {}
    done: list[Call] = []
    for line in text.splitlines():
        m = _ENTER.match(line)
        if m:
            tid, nr = int(m[1]), int(m[3])
            open_calls[tid] = Call(tid, nr, int(m[4], 16), round(float(m[2]) * 1e9))
            continue
        m = _EXIT.match(line)
        if m:
            call = open_calls.pop(int(m[1]), None)
            if call is not None and call.nr == int(m[3]):
                call.exit = round(float(m[2]) * 1e9)
                call.ret = int(m[4])
                done.append(call)
    done.sort(key=lambda c: c.enter)
    return done


def _first(calls: list[Call], ok: Any, after: int = 0) -> Call | None:
    return next((c for c in calls if c.enter >= after and ok(c)), None)


def _last(calls: list[Call], ok: Any, before: int) -> Call | None:
    found = None
    for c in calls:
        if c.enter >= before:
            break
        if ok(c):
            found = c
    return found


def table(rows: list[dict[str, int]]) -> dict[str, Any]:
    """p50 (µs) of each hop over the turns that have both its stamps, and the count."""
    out: dict[str, Any] = {}
    for name, a, b in HOPS:
        deltas = [r[b] - r[a] for r in rows if a in r and b in r]
        if deltas:
            out[name] = round(statistics.median(deltas) / 1000)
    out["turns"] = len(rows)
    return out
