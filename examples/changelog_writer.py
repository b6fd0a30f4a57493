"""A user-defined orchestrator: ``changelog`` asks an agent to summarise a
repository's history into ``CHANGES.md`` and keeps the result.

It is built exactly like the built-in ones: an actor with a queue and a durable
workflow whose steps drive a vm by name through the client. Serve it next to the
built-ins with a registry function::

    from host.app import build_registry, host_runtime
    registry = lambda manager: Registry({**build_registry(manager).actors,
                                         "changelog": changelog_writer()})
    async with host_runtime(registry=registry) as engine: ...

then ``send("summarize", {"repo": "/path/to/repo"}, wait=True)`` (over HTTP the
client uploads the local repository; in-process, give ``changelog_writer`` a
``RepoPolicy(roots=[...])`` that allows the path).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from orchestrator import ActorDefinition, Loop, WorkflowContext, actor, queue, workflow
from orchestrator.builtin import REPO_DIR, RepoPolicy, put_repo, run_agent_task, vm_input_for

CHANGES = f"{REPO_DIR}/CHANGES.md"


class Summarize(BaseModel):
    repo: str = Field(min_length=1, description="git URL or local path")
    agent_type: str = "coding-agent"


def _run(policy: RepoPolicy | None) -> Any:
    async def run(ctx: WorkflowContext) -> None:
        await _summarize(ctx, policy)

    return run


async def _summarize(ctx: WorkflowContext, policy: RepoPolicy | None) -> None:
    async def one(loop_ctx: WorkflowContext) -> Any:
        message = await loop_ctx.queue.next("wait-summarize", names=["summarize"], completable=True)
        assert message is not None
        req = Summarize.model_validate(message.body)
        vm = loop_ctx.client().vm.get_or_create(
            f"changelog-{message.id}", input=vm_input_for(req.repo)
        )

        async def write_changes() -> Any:
            log = await vm.exec(["git", "log", "--oneline", "-n", "50"], {"cwd": REPO_DIR})
            return await run_agent_task(
                vm,
                f"Write a short changelog of these commits to {CHANGES}:\n\n{log['stdout']}",
                agent_type=req.agent_type,
            )

        async def read_changes() -> str:
            return (await vm.read_file(CHANGES)).decode()

        await loop_ctx.step("clone-repo", lambda: put_repo(vm, req.repo, policy=policy))
        await loop_ctx.step("write-changes", write_changes, max_retries=1)
        changes = await loop_ctx.step("read-changes", read_changes)

        def keep() -> None:
            loop_ctx.state["changelogs"][req.repo] = changes

        await loop_ctx.step("keep", keep)
        await message.complete({"changes": changes})
        return Loop.continue_()

    await ctx.loop("summarize-loop", one)


def changelog_writer(policy: RepoPolicy | None = None) -> ActorDefinition:
    """``policy``: the host directories a local ``repo`` may be in (default: none —
    send a URL, or a ``blob:`` reference the HTTP client uploads for you)."""
    return actor(
        state={"changelogs": {}},
        queues={"summarize": queue("summarise a repository", body=Summarize)},
        actions={"changelogs": lambda c: c.state["changelogs"]},
        run=workflow(_run(policy)),
    )
