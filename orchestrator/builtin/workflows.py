"""``workflows``: DAG workflow definitions and their runs (docs/workflows.md).

One actor per workflow name (key ``[<name>]``). Its state is the versioned registry
of the workflow's definitions; its ``run`` queue runs a definition: each message is
a durable run (``orchestrator.dag.executor``) carrying the whole definition, so a
run never needs the registry after it started and keeps the version it started with.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from ..contexts import ActorContext
from ..dag.definition import WorkflowDefinition, load_definition
from ..dag.executor import RunOptions, WorkflowNotFound, execute
from ..dag.validate import bind_params
from ..definitions import ActorDefinition, actor, event, queue
from ..errors import InvalidRequest
from ..workflow import WorkflowContext
from ._agent import put_repo, vm_input_for
from ._input import parse
from ._repo import RepoPolicy, RepoRequest
from ._runs import BUILTIN_CONCURRENCY, DEFAULT_KEEP_VM_HOURS, expire_vm

KEEP_VERSIONS = 50


def _invalid(loc: tuple[str | int, ...], err: InvalidRequest, value: Any) -> ValidationError:
    """A validation error at ``loc`` (so a send names ``body.<loc>``)."""
    return ValidationError.from_exception_data(
        "WorkflowRunRequest",
        [
            InitErrorDetails(
                type=PydanticCustomError("invalid", "{message}", {"message": err.message}),
                loc=loc,
                input=value,
            )
        ],
    )


def _loc(field: str) -> tuple[str | int, ...]:
    return tuple(int(p) if p.isdigit() else p for p in field.split(".") if p)


class WorkflowRunRequest(RepoRequest):
    """A message on ``workflows/<name>``'s ``run`` queue."""

    model_config = ConfigDict(extra="forbid")

    definition: dict[str, Any] = Field(description="the whole definition the run executes")
    params: dict[str, Any] = Field(default_factory=dict, description="the run's param values")
    vm_key: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="an existing vm to use as the run's shared vm (never destroyed by it)",
    )
    repo: str | None = Field(
        None,
        description="a repository put into the shared vm at /home/user/repo first: a git "
        "URL, an uploaded bundle ('blob:sha256:<hex>') or a host path inside "
        "AGENTVM_REPO_ROOTS",
    )
    keep_vm: Literal["on_failure", "always", "never"] = Field(
        "on_failure",
        description="keep the run's vms after it ends: on_failure (partial, failed, "
        "cancelled), always or never; kept vms expire after AGENTVM_KEEP_VM_HOURS",
    )

    @field_validator("definition")
    @classmethod
    def _definition(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            load_definition(value)
        except InvalidRequest as err:
            field = str(err.metadata.get("field") or "")
            raise _invalid(_loc(field) if field != "definition" else (), err, value) from None
        return value

    @field_validator("params")
    @classmethod
    def _params(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        data = info.data.get("definition")
        if data is None:  # the definition is invalid: reported on its own
            return value
        try:
            bind_params(WorkflowDefinition.model_validate(data), value)
        except InvalidRequest as err:
            field = str(err.metadata.get("field") or "params")
            raise _invalid(_loc(field.removeprefix("params")), err, value) from None
        return value


def _run_handler(policy: RepoPolicy, keep_hours: float) -> Any:
    model = WorkflowRunRequest.with_policy(policy)

    async def handle(ctx: WorkflowContext, message: Any) -> dict[str, Any]:
        req = parse(model, message.body)
        defn = load_definition(req.definition)
        repo = req.repo

        async def put(vm: Any) -> Any:
            assert repo is not None
            return await put_repo(vm, repo, policy=policy)

        opts = RunOptions(
            params=bind_params(defn, req.params),
            vm_key=req.vm_key,
            repo=repo,
            keep_vm=req.keep_vm,
            keep_hours=keep_hours,
            put_repo=put if repo else None,
            vm_input=vm_input_for(repo),
        )
        return await execute(ctx, message.id, defn, opts)

    return handle


# --- the registry ---------------------------------------------------------------------------


def _name(c: ActorContext) -> str:
    return str(c.key[0]) if c.key else ""


def _versions(c: ActorContext) -> dict[str, Any]:
    out: dict[str, Any] = c.state.setdefault("versions", {})
    return out


def put_definition(c: ActorContext, definition: Any) -> dict[str, Any]:
    """Register ``definition`` (its ``name`` must be the key): unchanged when equal to
    the latest, else stored as ``max(latest + 1, definition.version)``."""
    defn = load_definition(definition)
    name = _name(c)
    if defn.name != name:
        raise InvalidRequest(
            f"definition.name: {defn.name!r} is not this workflow's name {name!r}",
            field="definition.name",
        )
    versions = _versions(c)
    latest = int(c.state.get("latest") or 0)
    data = defn.model_dump(mode="json")
    if latest and versions.get(str(latest)) is not None:
        current = dict(versions[str(latest)])
        if {**current, "version": 0} == {**data, "version": 0}:
            return {"name": name, "version": latest, "created": False}
    version = max(latest + 1, defn.version)
    versions[str(version)] = {**data, "version": version}
    c.state["latest"] = version
    for old in sorted(versions, key=int)[:-KEEP_VERSIONS]:
        del versions[old]
    return {"name": name, "version": version, "created": True}


def get_definition(c: ActorContext, version: Any = None) -> dict[str, Any]:
    """The definition of ``version`` (default: the latest)."""
    versions = _versions(c)
    if version is None:
        version = c.state.get("latest")
    if isinstance(version, bool) or not isinstance(version, int | str | None):
        raise InvalidRequest("version must be an integer", field="version")
    found = versions.get(str(version)) if version is not None else None
    if found is None:
        what = f"version {version} of " if version is not None and versions else ""
        raise WorkflowNotFound(
            f"no {what}workflow {_name(c)!r}", workflow=_name(c), version=version
        )
    return dict(found)


def versions(c: ActorContext) -> list[dict[str, Any]]:
    """``[{version, steps, description}]``, oldest first."""
    out = []
    for v in sorted(_versions(c), key=int):
        d = _versions(c)[v]
        out.append(
            {
                "version": int(v),
                "steps": len(d.get("steps") or []),
                "description": d.get("description", ""),
            }
        )
    return out


def summary(c: ActorContext) -> dict[str, Any]:
    """``{name, latest, versions, description, params}`` (of the latest version)."""
    latest = c.state.get("latest")
    d = _versions(c).get(str(latest), {}) if latest else {}
    return {
        "name": _name(c),
        "latest": latest,
        "versions": len(_versions(c)),
        "description": d.get("description", ""),
        "params": d.get("params", []),
    }


def workflows(
    policy: RepoPolicy | None = None, *, keep_vm_hours: float = DEFAULT_KEEP_VM_HOURS
) -> ActorDefinition:
    """The ``workflows`` actor; ``policy``: where local repositories may come from."""
    policy = policy or RepoPolicy()
    model = WorkflowRunRequest.with_policy(policy)
    return actor(
        state={"versions": {}, "latest": 0},
        queues={
            "run": queue(
                "run a definition: {definition, params?, vm_key?, repo?, keep_vm?}",
                body=model,
                run=_run_handler(policy, keep_vm_hours),
                concurrency=BUILTIN_CONCURRENCY,
            )
        },
        events={
            "workflow_started": event("{run_id, workflow, version, params, steps}"),
            "step_started": event("{run_id, step, attempt, vm}"),
            "step_completed": event("{run_id, step, text (<= 16 KB), duration_ms, usage}"),
            "step_failed": event("{run_id, step, error}"),
            "step_skipped": event("{run_id, step, reason, dependency?}"),
            "workflow_completed": event("{run_id, status, steps: {id: status}}"),
        },
        actions={
            "put_definition": put_definition,
            "get_definition": get_definition,
            "versions": versions,
            "summary": summary,
            "expire_vm": expire_vm,
        },
    )


__all__ = ["WorkflowRunRequest", "workflows"]
