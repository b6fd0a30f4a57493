"""Check action arguments against the action's signature before calling it.

Annotated parameters are validated (and converted) with pydantic in lax mode.

A wrong number of arguments, or an argument that does not match the action's type
annotation, is the caller's mistake: it gets a 400 naming the parameter instead of
a ``TypeError`` from inside the actor (which would be a 500).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from orchestrator import Registry
from orchestrator.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class _Checker:
    signature: inspect.Signature | None
    adapters: tuple[tuple[int, str, TypeAdapter[Any]], ...]
    params: tuple[str, ...]

    def check(self, actor: str, action: str, args: list[Any]) -> list[Any]:
        if self.signature is None:
            return args
        try:
            self.signature.bind(None, *args)
        except TypeError as exc:
            raise InvalidRequest(
                f"action {action!r} of {actor!r} takes ({', '.join(self.params)}): {exc}",
                field="args",
                action=action,
                parameters=list(self.params),
            ) from exc
        if not self.adapters:
            return args
        out = list(args)
        for index, pname, adapter in self.adapters:
            if index < len(args):
                try:
                    out[index] = adapter.validate_python(args[index])
                except ValidationError as exc:
                    first = exc.errors()[0]
                    raise InvalidRequest(
                        f"args[{index}] ({pname}) of action {action!r}: {first['msg']}",
                        field=f"args[{index}]",
                        parameter=pname,
                        action=action,
                    ) from exc
        return out


_NO_CHECK = _Checker(None, (), ())
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _build(fn: Callable[..., Any]) -> _Checker:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return _NO_CHECK
    params = list(sig.parameters.values())
    if not params or params[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.VAR_POSITIONAL,
    ):
        return _NO_CHECK
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    adapters: list[tuple[int, str, TypeAdapter[Any]]] = []
    names: list[str] = []
    for index, p in enumerate(params[1:]):
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            names.append(f"*{p.name}")
            break
        if p.kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            break
        names.append(p.name if p.default is inspect.Parameter.empty else f"{p.name}?")
        hint = hints.get(p.name)
        if hint is None or hint is Any:
            continue
        try:
            adapters.append((index, p.name, TypeAdapter(hint)))
        except Exception:
            continue
    return _Checker(sig, tuple(adapters), tuple(names))


class ArgumentChecker:
    """Per (actor type, action), built once from the registry's definitions."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._cache: dict[tuple[str, str], _Checker] = {}

    def check(self, actor: str, action: str, args: list[Any]) -> list[Any]:
        """``args`` validated against the action's annotations (converted where the
        annotation asks, e.g. a string for a ``bytes`` parameter)."""
        checker = self._cache.get((actor, action))
        if checker is None:
            definition = self.registry.get(actor)
            fn = definition.actions.get(action) if definition is not None else None
            if fn is None:
                return args  # the engine reports the unknown type or action
            checker = self._cache[(actor, action)] = _build(fn)
        return checker.check(actor, action, args)
