"""What mutmut 3.8 never mutates, mutated here (issue 28): part of ``bash scripts/mutation``.

mutmut leaves out every decorated function (``@property``, ``@lru_cache``, pydantic's
validators), module-level constants and class bodies (dataclass defaults, pydantic ``Field``
bounds). This supplement reads a module with ``ast`` and makes one mutant per change of:

- a number: ``n`` → ``n + 1`` and ``n - 1``; ``True`` ↔ ``False``;
- a string: ``"s"`` → ``"XXsXX"`` (``""`` → ``"XXXX"``), in f-strings too; not the strings of a
  tuple, list or set, nor a dict's keys (dropping one covers them), nor a ``description=``;
- a tuple, list, set or dict literal: each element (entry) dropped in turn;
- a call: each keyword argument dropped in turn (``undefined=StrictUndefined``, ``ge=1``);
  ``x.lower()`` (``upper``, ``casefold``, ``strip`` ...) → ``x``;
- in decorated functions also: ``==`` ↔ ``!=``, ``<`` ↔ ``<=``, ``>`` ↔ ``>=``, ``in`` ↔
  ``not in``, ``is`` ↔ ``is not``, ``and`` ↔ ``or``, ``not x`` → ``x``, ``+`` ↔ ``-``,
  ``*`` ↔ ``/``.

The targets are a module's constants (``NAME = ...``), class attributes (``Class.name``) and
decorated functions (``Class.prop``, ``function``), named like mutmut's functions, so
``scripts/mutation.toml``'s ``[[accepted]]`` entries match them the same way. A module with
``functions`` gets only the targets its ``supplement`` list names; any module may name them.

Each mutant runs the module's fast tests in a child forked from a process that has imported the
heavy third-party packages already, with the mutated source served to the import system from
memory (nothing is written into the tree): pytest's exit code 1 (a test failed) or 2 (the tests
could not be collected: the module fails at import) is a kill, 0 a survivor, anything else an
error, and a child over the time limit a timeout.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import difflib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import cast

KILLED, SURVIVED, TIMEOUT, ERROR = "killed", "survived", "timeout", "error"
_STRIPPING = frozenset({"lower", "upper", "casefold", "strip", "lstrip", "rstrip"})
_SWAP: dict[type[ast.AST], type[ast.AST]] = {
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE,
    ast.GtE: ast.Gt, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
    ast.And: ast.Or, ast.Or: ast.And, ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div,
    ast.Div: ast.Mult,
}
_QUIET_KEYWORDS = frozenset({"description", "title"})  # wording nobody's code reads
# Imported before the children fork, so that each child starts with them loaded.
_PRELOAD = ("pytest", "hypothesis", "pydantic", "pydantic_settings", "jinja2", "httpx", "ldap3",
            "requests", "pypsrp.client", "iso3166", "azure.functions", "azure.storage.queue",
            "azure.identity", "kiota_http.middleware.middleware", "msgraph")


@dataclass(frozen=True)
class Mutant:
    target: str  # Class.name, NAME or function, inside the module
    before: str
    after: str
    source: str  # the whole mutated module


Edit = Callable[[], None]


def _sites(node: ast.AST, operators: bool) -> Iterator[Edit]:
    """Every change of ``node``'s tree, as functions that make it in place (in walk order)."""
    for child in _walk(node):
        if isinstance(child, ast.Constant):
            yield from _constant(child)
        elif isinstance(child, (ast.Tuple, ast.List, ast.Set)) and isinstance(
                getattr(child, "ctx", ast.Load()), ast.Load):
            for i in range(len(child.elts)):
                yield _dropper(child.elts, i)
        elif isinstance(child, ast.Dict):
            for i in range(len(child.keys)):
                yield _drop_entry(child, i)
        elif isinstance(child, ast.Call):
            for i, keyword in enumerate(child.keywords):
                if keyword.arg not in _QUIET_KEYWORDS:
                    yield _dropper(child.keywords, i)
        if operators:
            yield from _operators(child)


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """ast.walk without docstrings, annotations, decorators, quiet keywords, collections'
    strings (dropped instead) and f-strings' format specs."""
    stack = [node]
    while stack:
        current = stack.pop(0)
        yield current
        for name, value in ast.iter_fields(current):
            if name in ("annotation", "returns", "decorator_list", "format_spec", "type_comment"):
                continue
            if isinstance(current, ast.keyword) and current.arg in _QUIET_KEYWORDS:
                continue
            children = value if isinstance(value, list) else [value]
            for i, child in enumerate(children):
                if not isinstance(child, ast.AST):
                    continue
                if name == "body" and i == 0 and _docstring(child):
                    continue
                if (isinstance(current, (ast.Tuple, ast.List, ast.Set)) or (
                        isinstance(current, ast.Dict) and name == "keys")) and isinstance(
                        child, ast.Constant) and isinstance(child.value, str):
                    continue
                stack.append(child)


def _docstring(node: ast.AST) -> bool:
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str))


def _constant(node: ast.Constant) -> Iterator[Edit]:
    value = node.value
    if isinstance(value, bool):
        yield lambda: setattr(node, "value", not value)
    elif isinstance(value, (int, float)):
        yield lambda: setattr(node, "value", value + 1)
        yield lambda: setattr(node, "value", value - 1)
    elif isinstance(value, str):
        yield lambda: setattr(node, "value", f"XX{value}XX" if value else "XXXX")


def _dropper(items: list[ast.expr] | list[ast.keyword], i: int) -> Edit:
    def edit() -> None:
        items.pop(i)
    return edit


def _drop_entry(node: ast.Dict, i: int) -> Edit:
    def edit() -> None:
        node.keys.pop(i)
        node.values.pop(i)
    return edit


def _operators(node: ast.AST) -> Iterator[Edit]:
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in _SWAP:
                yield _swapper(node.ops, i)
    elif isinstance(node, (ast.BoolOp, ast.BinOp)):
        attribute = "op"
        if type(getattr(node, attribute)) in _SWAP:
            yield lambda: setattr(node, attribute, _SWAP[type(node.op)]())
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield lambda: setattr(node, "op", ast.UAdd())  # replaced by its operand in _unwrap
    if isinstance(node, ast.Call) and not node.args and not node.keywords and isinstance(
            node.func, ast.Attribute) and node.func.attr in _STRIPPING:
        yield lambda: setattr(node.func, "attr", "__str_identity__")


def _swapper(ops: list[ast.cmpop], i: int) -> Edit:
    def edit() -> None:
        ops[i] = cast(ast.cmpop, _SWAP[type(ops[i])]())
    return edit


class _Unwrap(ast.NodeTransformer):
    """Turns the markers _operators leaves (``+x`` for a removed ``not``, ``x.__str_identity__()``
    for a removed ``.lower()``) into the operand itself."""

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        return node.operand if isinstance(node.op, ast.UAdd) else node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.func, ast.Attribute) and node.func.attr == "__str_identity__":
            return node.func.value
        return node


@dataclass(frozen=True)
class _Target:
    name: str
    node: ast.stmt
    operators: bool  # a function's body: operators too


def _targets(tree: ast.Module) -> Iterator[_Target]:
    for statement in tree.body:
        yield from _statement_targets(statement, "")


def _statement_targets(statement: ast.stmt, prefix: str) -> Iterator[_Target]:
    if isinstance(statement, (ast.Assign, ast.AnnAssign)) and statement.value is not None:
        targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
        unpacking = any(isinstance(t, ast.Tuple) for t in targets)
        if names and not unpacking and not names[0].startswith("__"):
            yield _Target(prefix + ",".join(names), statement, operators=False)
    elif isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)) and _decorated(statement):
        yield _Target(prefix + statement.name, statement, operators=True)
    elif isinstance(statement, ast.ClassDef) and not prefix:
        for inner in statement.body:
            yield from _statement_targets(inner, f"{statement.name}.")


def _decorated(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """What mutmut 3.8 skips: any decorator but a lone @staticmethod or @classmethod."""
    names = [d.id for d in function.decorator_list if isinstance(d, ast.Name)]
    if names in (["staticmethod"], ["classmethod"]) and len(function.decorator_list) == 1:
        return False
    return bool(function.decorator_list) and not any(
        isinstance(d, ast.Name) and d.id == "overload" for d in function.decorator_list)


def mutants(source: str, wanted: Sequence[str] | None) -> list[Mutant]:
    """The module's mutants; ``wanted`` names the targets (None: every target)."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    found: list[Mutant] = []
    for target in _targets(tree):
        if wanted is not None and not set(target.name.split(",")) & set(wanted):
            continue
        original = ast.unparse(target.node)
        count = sum(1 for _ in _sites(copy.deepcopy(target.node), target.operators))
        for k in range(count):
            changed = copy.deepcopy(target.node)
            edit = next(e for i, e in enumerate(_sites(changed, target.operators)) if i == k)
            edit()
            changed = _Unwrap().visit(changed)
            mutated = ast.unparse(changed)
            if mutated == original:
                continue
            before, after = _difference(original, mutated)
            found.append(Mutant(target.name, before, after,
                                _replace(lines, target.node, mutated)))
    return found


def _difference(original: str, mutated: str) -> tuple[str, str]:
    removed, added = [], []
    for line in difflib.ndiff(original.splitlines(), mutated.splitlines()):
        if line.startswith("- "):
            removed.append(line[2:])
        elif line.startswith("+ "):
            added.append(line[2:])
    return " ".join(" ".join(removed).split()), " ".join(" ".join(added).split())


def _replace(lines: list[str], node: ast.stmt, text: str) -> str:
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
    last = node.end_lineno or node.lineno
    indent = " " * node.col_offset
    body = "".join(indent + line + "\n" for line in text.splitlines())
    return "".join(lines[:first]) + body + "".join(lines[last:])


# -- running ---------------------------------------------------------------------------------


class _Served(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves one module's mutated source from memory."""

    def __init__(self, name: str, path: Path, source: str) -> None:
        self.name, self.path, self.source = name, path, source

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin=str(self.path),
                                               is_package=self.path.name == "__init__.py")

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        module.__file__ = str(self.path)
        if self.path.name == "__init__.py":
            module.__path__ = [str(self.path.parent)]
        exec(compile(self.source, str(self.path), "exec"), module.__dict__)  # noqa: S102


def preload() -> None:
    """Import the heavy third-party packages once, before the children fork."""
    for name in _PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def _child(repo: Path, dotted: str, path: str, source: str | None,
           pytest_args: Sequence[str]) -> int:
    import pytest

    sys.dont_write_bytecode = True
    if source is not None:
        sys.meta_path.insert(0, _Served(dotted, repo / path, source))
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    return int(pytest.main(list(pytest_args)))


def _outcome(status: int) -> str:
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        return {0: SURVIVED, 1: KILLED, 2: KILLED}.get(code, ERROR)
    return ERROR


def run(repo: Path, dotted: str, path: str, sources: Sequence[str | None],
        pytest_args: Sequence[str], jobs: int, limit: float) -> list[tuple[str, float]]:
    """(outcome, seconds) of each source (None: the module as it is), ``jobs`` at a time."""
    results: list[tuple[str, float] | None] = [None] * len(sources)
    running: dict[int, tuple[int, float]] = {}  # pid -> (index, started)
    waiting = list(range(len(sources)))
    while waiting or running:
        while waiting and len(running) < jobs:
            index = waiting.pop(0)
            pid = os.fork()
            if pid == 0:  # the child
                code = 4
                try:
                    code = _child(repo, dotted, path, sources[index], pytest_args)
                finally:
                    os._exit(code)
            running[pid] = (index, time.monotonic())
        time.sleep(0.02)
        for pid, (index, started) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            seconds = time.monotonic() - started
            if done == 0 and seconds > limit:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                results[index] = (TIMEOUT, seconds)
            elif done == 0:
                continue
            else:
                results[index] = (_outcome(status), seconds)
            del running[pid]
    return [r for r in results if r is not None]
