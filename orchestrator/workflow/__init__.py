"""Durable, replayable workflows as an actor's run handler."""

from ._context import Loop, LoopBreak, LoopContinue, RaceResult, WorkflowContext, workflow

__all__ = ["Loop", "LoopBreak", "LoopContinue", "RaceResult", "WorkflowContext", "workflow"]
