"""The vm actor's checkpoint actions: save ``/home/user`` and the vm's session records,
bring them back, fork a new vm from them (storage: ``checkpoints.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import Callable
from typing import Any

from host.app import HostSettings
from host.sessions import transcript
from host.sessions.events import ActorLogEventStore, SessionEvent
from orchestrator import ActorContext
from orchestrator.definitions import action
from orchestrator.errors import AgentVMError, InvalidRequest
from orchestrator.keys import normalize_key

from .actions_base import Opts, sandbox_of, used
from .checkpoints import (
    CheckpointNotFound,
    CheckpointStore,
    check_name,
    now,
    retained,
    root_for,
    vm_dir,
)
from .manager import SandboxManager
from .options import parse_call_options

HOME = "/home/user"
# Emptying the workspace before a restore: a deadline, as for every call into a sandbox.
_CLEAR_TIMEOUT = 300.0


class CheckpointTimeout(AgentVMError):
    group = "checkpoint"
    code = "timeout"
    http_status = 504


class ForkOptions(Opts):
    checkpoint: str | None = None


def _session_ids(state: dict[str, Any]) -> list[str]:
    return [*(state.get("sessions") or {}), *(state.get("closed_sessions") or {})]


async def _conversations(c: ActorContext) -> dict[str, Any]:
    """Each session's conversation now: ``{sid: {seq, transcript}}`` (its last event
    number and the compacted transcript ``resume_session`` continues from)."""
    store, out = ActorLogEventStore(c), {}
    for sid in _session_ids(c.state):
        events: list[SessionEvent] = []
        while page := await store.read(sid, events[-1].seq if events else 0, limit=1000):
            events.extend(page)
        if events:
            out[sid] = {"seq": events[-1].seq, "transcript": transcript.compact(events)}
    return out


async def _rewind(c: ActorContext, saved: dict[str, Any]) -> None:
    """Each session's log as it was at the checkpoint: one transcript event, where the
    log went on since (or, in a forked vm, does not exist yet)."""
    store = ActorLogEventStore(c)
    for sid, snap in saved.items():
        last = 0
        while page := await store.read(sid, last, limit=1000):
            last = page[-1].seq
        if last != snap["seq"]:
            await store.compact(sid, snap["transcript"])


def _manifest(c: ActorContext) -> dict[str, dict[str, Any]]:
    m: dict[str, dict[str, Any]] = c.state.setdefault("checkpoints", {})
    return m


class CheckpointActions:
    """``checkpoint``/``restore``/``fork``/``list_checkpoints``/``delete_checkpoint``.

    ``close_session(c, sid)`` is the vm's session action: a restore closes the
    sessions running now (their agents would see the workspace change under them)."""

    def __init__(
        self,
        manager: SandboxManager,
        close_session: Callable[..., Any],
        settings: HostSettings | None = None,
    ) -> None:
        self.manager = manager
        self.close_session = close_session
        self.settings = settings

    def _settings(self) -> HostSettings:
        return self.settings or HostSettings()

    def store(self, actor_id: str) -> CheckpointStore:
        root = self._settings().checkpoint_dir or root_for(self.manager.db)
        return CheckpointStore(vm_dir(root, actor_id))

    @action
    @used
    async def checkpoint(self, c: ActorContext, name: Any) -> dict[str, Any]:
        """Save ``/home/user`` and the session records as checkpoint ``name`` (an
        older one of that name is replaced); its manifest entry."""
        name = check_name(name)
        store = self.store(c.actor_id)
        s = self._settings()
        sandbox = await sandbox_of(c)
        # A deadline: the sandbox decides how long its tar stream runs (a sparse
        # terabyte of zeros compresses to almost nothing and never ends).
        stream = sandbox.download_tar(HOME)
        try:
            async with asyncio.timeout(s.checkpoint_timeout):
                info = await store.write(name, stream, s.checkpoints_max_bytes)
        except TimeoutError:
            raise CheckpointTimeout(
                f"checkpoint {name!r} took longer than {s.checkpoint_timeout} s "
                "(AGENTVM_CHECKPOINT_TIMEOUT); nothing was kept",
                timeout=s.checkpoint_timeout,
            ) from None
        finally:
            await stream.aclose()  # type: ignore[attr-defined]  # ends the sandbox's stream
        # Identical content: the archive of the older checkpoint, linked (deduplicated).
        for other in list(_manifest(c).values()):
            if other["sha256"] == info["sha256"] and other["name"] != name:
                store.link_same(other["name"], name)
                break
        entry = {"name": name, "created_at": now(), **info}
        meta = {
            **entry,
            "sessions": copy.deepcopy(c.state.get("sessions", {})),
            "closed_sessions": copy.deepcopy(c.state.get("closed_sessions", {})),
            "conversations": await _conversations(c),
        }
        store.save_sidecar(name, meta)
        manifest = _manifest(c)
        manifest.pop(name, None)
        manifest[name] = entry
        for old in retained(manifest, s.checkpoints_max_per_vm, s.checkpoints_max_bytes):
            store.delete(old)
            manifest.pop(old, None)
        return entry

    @action
    @used
    async def restore(self, c: ActorContext, name: Any) -> dict[str, Any]:
        """Close the vm's sessions, empty ``/home/user``, extract checkpoint ``name``
        into it and bring back its session records (resumable with ``resume_session``)."""
        name = check_name(name)
        store = self.store(c.actor_id)
        manifest = _manifest(c)
        meta = store.load_sidecar(name)  # CheckpointNotFound before anything changes
        for sid in list(c.state.get("sessions", {})):
            with contextlib.suppress(AgentVMError):
                await self.close_session(c, sid)
        sandbox = await sandbox_of(c)
        cleared = await sandbox.exec(
            ["find", HOME, "-mindepth", "1", "-delete"], timeout=_CLEAR_TIMEOUT
        )
        if cleared.exit_code != 0:
            raise AgentVMError(f"could not empty {HOME}: {cleared.stderr[-500:]!r}")
        await sandbox.upload_tar(HOME, store.read(name))
        # Sessions open at checkpoint time have no agent now: they come back closed,
        # so resume_session picks up their conversation.
        closed = dict(meta.get("closed_sessions") or {})
        for sid, record in (meta.get("sessions") or {}).items():
            closed[sid] = {"record": record, "closed_at": meta["created_at"]}
        c.state["sessions"] = {}
        c.state["closed_sessions"] = closed
        await _rewind(c, dict(meta.get("conversations") or {}))
        entry = {k: meta[k] for k in ("name", "created_at", "size", "raw_size", "sha256")}
        manifest.setdefault(name, entry)  # a forked vm adopts the checkpoint it got
        return entry

    @action
    async def list_checkpoints(self, c: ActorContext) -> list[dict[str, Any]]:
        """The vm's checkpoints, oldest first: ``[{name, created_at, size, sha256}]``."""
        m = _manifest(c)
        return sorted(m.values(), key=lambda e: e["created_at"])

    @action
    async def delete_checkpoint(self, c: ActorContext, name: Any) -> None:
        name = check_name(name)
        if _manifest(c).pop(name, None) is None:
            raise CheckpointNotFound(f"no checkpoint {name!r}", name=name)
        self.store(c.actor_id).delete(name)

    @action
    @used
    async def fork(self, c: ActorContext, new_key: Any, opts: Any = None) -> dict[str, Any]:
        """Create vm ``new_key`` (same options) starting from checkpoint ``checkpoint``
        (default: one taken now, named ``fork``); the two vms share nothing after."""
        o = parse_call_options(ForkOptions, opts, "fork")
        try:
            key = normalize_key(new_key)
        except InvalidRequest as exc:
            raise InvalidRequest(f"new_key: {exc.message}", field="new_key") from None
        if not key:
            raise InvalidRequest("new_key must not be empty", field="new_key")
        if o.checkpoint is None:
            name = "fork"
            await self.checkpoint(c, name)
        else:
            name = check_name(o.checkpoint, "checkpoint")
            if name not in _manifest(c):
                raise CheckpointNotFound(f"no checkpoint {name!r}", name=name)
        handle = await c.client().vm.create(list(key), input=c.state["options"])
        self.store(c.actor_id).copy_to(self.store(await handle.resolve()), name)
        entry: dict[str, Any] = await handle.call("restore", name)
        return {"key": list(key), "checkpoint": entry}

    async def on_destroy(self, c: ActorContext) -> None:
        """A destroyed vm's checkpoints go with it."""
        await asyncio.to_thread(self.store(c.actor_id).remove_all)
