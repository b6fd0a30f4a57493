"""Runs: a per-message durable workflow with bounded concurrency.

Each message sent to ``translator``'s ``jobs`` queue is a *run*: ``translate`` is
its own workflow (steps, retries, durable history, crash replay). Up to three
runs execute at once per translator; the rest wait in order. A run that fails
ends ``failed`` with its error; the next message is served as usual.

    uv run python examples/runs.py
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from orchestrator import Engine, WorkflowContext, actor, queue, setup


class Job(BaseModel):
    text: str
    lang: str = "fr"


WORDS = {"fr": {"hello": "bonjour", "world": "monde"}}


async def translate(ctx: WorkflowContext, message: Any) -> dict[str, Any]:
    job = Job.model_validate(message.body)
    await ctx.run_meta(lang=job.lang)  # shown by list_runs / GET .../runs

    def lookup() -> dict[str, str]:
        table = WORDS.get(job.lang)
        if table is None:
            raise ValueError(f"no dictionary for {job.lang!r}")
        return table

    # A step's output is committed before it returns; after a crash it is replayed.
    table = await ctx.step("load-dictionary", lookup, max_retries=1)

    async def render() -> str:
        await asyncio.sleep(0.01)  # a slow call (a model, a vm) goes here
        return " ".join(table.get(w, w) for w in job.text.split())

    return {"text": await ctx.step("render", render)}


translator = actor(queues={"jobs": queue(body=Job, run=translate, concurrency=3)})
registry = setup(use={"translator": translator})


async def main() -> None:
    db = Path(tempfile.mkdtemp()) / "runs.db"
    async with Engine(registry, db=str(db)) as engine:
        h = engine.client().translator.get_or_create("main")
        ok = await h.send("jobs", {"text": "hello world"}, wait=True, timeout=10)
        print(ok.status, ok.response)  # completed {'text': 'bonjour monde'}
        bad = await h.send("jobs", {"text": "hi", "lang": "xx"}, wait=True, timeout=10)
        print(bad.status, bad.error and bad.error["code"])  # failed step_exhausted
        for run in await h.runs():
            print(run.run_id, run.status, run.meta)
        detail = await h.run(bad.message_id)
        print([(e.path, e.status, e.attempts) for e in detail.history])


if __name__ == "__main__":
    asyncio.run(main())
