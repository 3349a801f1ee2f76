"""The error catalogue is complete and whole: every code the service, the worker, the SDK and
the CLI send or raise is in ``lrprobe.client.error_catalogue.CATALOGUE``; every entry has a
family, a title and advice; every problem code has an error status whose SDK exception is its
family's; and the SDK, the service, the dashboard and the CLI take what they say from it.

Codes are found by reading the source (``ast``), so a code added tomorrow is caught too. A
code counts as sent where a string literal is
- the ``code`` (or ``error_code``) of a class body, a keyword argument, an assignment or a dict;
- the argument bound to a parameter named ``code`` of a function or class defined in the tree
  (``IntakeError("pickle_refused", ...)``, ``_fail(sessions, job_id, worker, "out_of_memory",
  ...)``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from lrprobe.client import (
    ERROR_CLASSES,
    Conflict,
    ConnectionFailed,
    JobFailed,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
    ValidationFailed,
    WaitTimeout,
)
from lrprobe.client._errors import FAMILY_CLASSES
from lrprobe.client.error_catalogue import CATALOGUE, FAMILIES, family_for_status
from lrprobe.client.schemas import (
    CLIENT_ERROR_CODES,
    ERROR_CODES,
    JOB_ERROR_CODES,
    PROBLEM_CODES,
)
from lrprobe.service.errors import ServiceError

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("service", "worker", "client", "cli", "rules")
CODE_NAMES = frozenset({"code", "error_code"})
# The class every error the service renders as problem+json derives from.
PROBLEM_BASE = "ServiceError"

_T = TypeVar("_T")
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


@dataclass(frozen=True)
class Sent:
    code: str
    module: str  # dotted, relative to the lrprobe namespace: "service.errors"
    line: int
    maker: str | None  # the class or function the code is given to; None for a plain value

    def __str__(self) -> str:
        return f"{self.code!r} ({self.module.replace('.', '/')}.py:{self.line})"


def _literals(node: ast.expr | None) -> Iterator[str]:
    """The string literals an expression can evaluate to (``None if x else "code"`` too)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, ast.IfExp):
        yield from _literals(node.body)
        yield from _literals(node.orelse)
    elif isinstance(node, ast.BoolOp):
        for value in node.values:
            yield from _literals(value)


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _code_position(function: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> int | None:
    names = [a.arg for a in function.args.posonlyargs + function.args.args]
    if method and names:
        names = names[1:]
    return names.index("code") if "code" in names else None


@dataclass
class _Tree:
    modules: dict[str, ast.Module]
    positions: dict[tuple[str, str], int]  # (module, callable) → index of its code argument
    bases: dict[str, list[str]]  # class → base class names
    returns: dict[tuple[str, str], str]  # (module, function) → the class it says it returns

    @classmethod
    def parse(cls, sources: Mapping[str, str]) -> _Tree:
        tree = cls({m: ast.parse(text) for m, text in sources.items()}, {}, {}, {})
        for module, parsed in tree.modules.items():
            for node in parsed.body:
                if isinstance(node, ast.ClassDef):
                    tree.bases[node.name] = [b for b in map(_name, node.bases) if b]
                    for item in node.body:
                        if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                            position = _code_position(item, method=True)
                            if position is not None:
                                tree.positions[module, node.name] = position
                elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    position = _code_position(node, method=False)
                    if position is not None:
                        tree.positions[module, node.name] = position
                    if node.returns is not None and (returned := _name(node.returns)):
                        tree.returns[module, node.name] = returned
        # A subclass without its own __init__ takes its code where its base does.
        for module, parsed in tree.modules.items():
            for node in parsed.body:
                if isinstance(node, ast.ClassDef) and (module, node.name) not in tree.positions:
                    inherited = {p for c in tree.ancestors(node.name)
                                 for (_, n), p in tree.positions.items() if n == c}  # fmt: skip
                    if len(inherited) == 1:
                        tree.positions[module, node.name] = inherited.pop()
        return tree

    def ancestors(self, name: str) -> list[str]:
        seen: list[str] = []
        todo = list(self.bases.get(name, []))
        while todo:
            base = todo.pop()
            if base not in seen:
                seen.append(base)
                todo.extend(self.bases.get(base, []))
        return seen

    def _lookup(self, table: Mapping[tuple[str, str], _T], module: str, callee: str) -> _T | None:
        """``callee``'s entry: its definition in this module if there is one, else the one
        value every definition of that name agrees on."""
        if any(isinstance(n, _DEFINITIONS) and n.name == callee for n in self.modules[module].body):
            return table.get((module, callee))
        found = {v for (_, n), v in table.items() if n == callee}
        return found.pop() if len(found) == 1 else None

    def position(self, module: str, callee: str | None) -> int | None:
        """Where ``callee`` takes its code."""
        return None if callee is None else self._lookup(self.positions, module, callee)

    def problem_class(self, sent: Sent) -> str | None:
        """The ServiceError subclass a code is given to (directly, or by the function that
        builds it), None when the code is not rendered as a problem."""
        if sent.maker is None:
            return None
        for candidate in (sent.maker, self._lookup(self.returns, sent.module, sent.maker)):
            if candidate == PROBLEM_BASE or PROBLEM_BASE in self.ancestors(candidate or ""):
                return candidate
        return None


def scan(sources: Mapping[str, str]) -> tuple[list[Sent], _Tree]:
    """Every code literal in ``sources`` (dotted module name → source text)."""
    tree = _Tree.parse(sources)
    sent: list[Sent] = []
    for module, parsed in tree.modules.items():
        # A class body's ``code = ...`` is read with its class, not again as an assignment.
        class_body = {
            id(item) for n in ast.walk(parsed) if isinstance(n, ast.ClassDef) for item in n.body
        }
        for node in ast.walk(parsed):
            found: list[tuple[str, str | None]] = []
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    targets = (
                        item.targets if isinstance(item, ast.Assign)
                        else [item.target] if isinstance(item, ast.AnnAssign) else []
                    )  # fmt: skip
                    if any(_name(t) in CODE_NAMES for t in targets):
                        value = item.value if isinstance(item, ast.Assign | ast.AnnAssign) else None
                        found += [(c, node.name) for c in _literals(value)]
            elif isinstance(node, ast.Assign) and id(node) not in class_body:
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id in CODE_NAMES:
                        found += [(c, None) for c in _literals(node.value)]
                    elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                        for t, v in zip(target.elts, node.value.elts, strict=False):
                            if isinstance(t, ast.Name) and t.id in CODE_NAMES:
                                found += [(c, None) for c in _literals(v)]
            elif isinstance(node, ast.Call):
                maker = _name(node.func)
                for keyword in node.keywords:
                    if keyword.arg in CODE_NAMES:
                        found += [(c, maker) for c in _literals(keyword.value)]
                position = tree.position(module, maker)
                if position is not None and len(node.args) > position:
                    found += [(c, maker) for c in _literals(node.args[position])]
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value in CODE_NAMES:
                        found += [(c, None) for c in _literals(value)]
            sent += [Sent(c, module, getattr(node, "lineno", 0), m) for c, m in found]
    return sent, tree


def _sources() -> dict[str, str]:
    return {
        ".".join(path.relative_to(ROOT).with_suffix("").parts): path.read_text()
        for folder in SOURCE_DIRS
        for path in sorted((ROOT / folder).rglob("*.py"))
    }


@pytest.fixture(scope="module")
def scanned() -> tuple[list[Sent], _Tree]:
    return scan(_sources())


def test_the_scanner_finds_each_way_a_code_is_sent() -> None:
    source = """
class BaseError(Exception):
    def __init__(self, code, message): ...
class TheirError(BaseError): ...
class Problem(ServiceError):
    code = "as_class_attribute"
def _fail(sessions, job_id, code, detail): ...
def _invalid(detail) -> Problem:
    return Problem(detail, code="as_keyword")
def run(cancel):
    code = None if cancel else "as_assignment"
    kind, code = "not_a_code", "as_tuple"
    raise TheirError("as_inherited_positional", "a message, not a code")
    _fail(s, j, "as_function_positional", "a message, not a code")
    return {"code": "in_a_dict", "detail": "a message"}
"""
    sent, tree = scan({"service.example": source})
    assert sorted(s.code for s in sent) == sorted([
        "as_class_attribute", "as_keyword", "as_assignment", "as_tuple",
        "as_inherited_positional", "as_function_positional", "in_a_dict",
    ])  # fmt: skip
    problems = {s.code for s in sent if tree.problem_class(s)}
    assert problems == {"as_class_attribute", "as_keyword"}


def test_the_scan_sees_every_source_folder_and_each_kind_of_code(
    scanned: tuple[list[Sent], _Tree],
) -> None:
    sent, _ = scanned
    folders = {s.module.split(".")[0] for s in sent}
    assert folders == set(SOURCE_DIRS)
    codes = {s.code for s in sent}
    # one of each: a problem class, an intake refusal, a runner failure, the reaper, the CLI
    assert {"request_too_large", "unsafe_archive", "out_of_memory", "worker_lost", "usage"} <= codes


def test_every_code_sent_or_raised_is_in_the_catalogue(scanned: tuple[list[Sent], _Tree]) -> None:
    sent, _ = scanned
    missing = [str(s) for s in sent if s.code not in ERROR_CODES]
    assert not missing, f"add these codes to lrprobe.client.schemas: {missing}"


def test_codes_are_in_the_catalogue_of_who_sends_them(scanned: tuple[list[Sent], _Tree]) -> None:
    sent, tree = scanned
    wrong = []
    for s in sent:
        if tree.problem_class(s):
            expected = PROBLEM_CODES  # an entry with an HTTP status
        elif s.module.startswith("worker."):
            expected = JOB_ERROR_CODES  # an entry marked job=True
        elif s.module.startswith("cli."):
            # `lrprobe probe` runs the worker's pipeline in-process, so it reports a job's codes
            expected = PROBLEM_CODES + JOB_ERROR_CODES + CLIENT_ERROR_CODES
        elif s.module.startswith("client."):
            expected = PROBLEM_CODES + CLIENT_ERROR_CODES
        else:
            continue
        if s.code not in expected:
            wrong.append(str(s))
    assert not wrong, f"give these codes a status or job=True in the catalogue: {wrong}"


@pytest.mark.parametrize("code", list(CATALOGUE))
def test_every_entry_has_a_family_a_title_and_advice(code: str) -> None:
    entry = CATALOGUE[code]
    assert entry.code == code
    assert entry.family in FAMILIES
    assert entry.title and entry.title[0].isupper() and not entry.title.endswith(".")
    # one sentence that says what to do
    assert entry.advice[0].isupper() and entry.advice.endswith("."), entry.advice
    assert entry.advice.count(". ") == 0, entry.advice


@pytest.mark.parametrize("code", PROBLEM_CODES)
def test_every_problem_code_has_an_error_status_of_its_family(code: str) -> None:
    """The SDK raises a problem's exception by its family, and a client that does not know the
    code by its status: both must agree."""
    status = CATALOGUE[code].status
    assert status is not None and 400 <= status <= 599
    assert FAMILY_CLASSES[CATALOGUE[code].family] is FAMILY_CLASSES[family_for_status(status)]
    assert ERROR_CLASSES[code] is FAMILY_CLASSES[CATALOGUE[code].family]


def test_the_sdk_maps_each_family() -> None:
    assert set(FAMILY_CLASSES) == set(FAMILIES)
    problem_families = {CATALOGUE[c].family for c in PROBLEM_CODES}
    assert {FAMILY_CLASSES[f] for f in problem_families} == {
        ValidationFailed, Unauthorized, NotFound, Conflict, RateLimited, ServerError,
    }  # fmt: skip
    # the SDK's own codes raise the class of their family; the probe's only as a failed job
    assert FAMILY_CLASSES[CATALOGUE["connection_error"].family] is ConnectionFailed
    assert FAMILY_CLASSES[CATALOGUE["wait_timeout"].family] is WaitTimeout
    assert FAMILY_CLASSES[CATALOGUE["cancelled"].family] is JobFailed
    assert FAMILY_CLASSES[CATALOGUE["time_limit_exceeded"].family] is JobFailed


def test_the_service_classes_name_a_problem_code_and_nothing_else() -> None:
    """Status and title come from the catalogue, so a class cannot drift from it."""
    for name, cls in _service_errors().items():
        assert cls.code in PROBLEM_CODES, name
        assert not {"status", "title"} & set(vars(cls)), f"{name} declares its own status"


def test_a_service_error_without_a_sentence_gives_the_catalogues_advice() -> None:
    from lrprobe.service.errors import JobNotFoundError

    error = JobNotFoundError()
    assert (error.status, error.title, error.detail) == (
        404, "Job not found", CATALOGUE["job_not_found"].advice,
    )  # fmt: skip


def test_the_cli_exits_by_family() -> None:
    from lrprobe.cli.errors import exit_status

    assert [exit_status(c) for c in ("usage", "file_not_found", "invalid_settings")] == [2] * 3
    assert [exit_status(c) for c in ("unauthorized", "admin_required")] == [3, 3]
    assert exit_status("wait_timeout") == 4
    assert [exit_status(c) for c in ("job_not_found", "out_of_memory", None)] == [1, 1, 1]
    # a code the catalogue does not know goes by its HTTP status
    assert (exit_status("http_401", 401), exit_status("http_502", 502)) == (3, 1)


def _service_errors() -> dict[str, type[ServiceError]]:
    todo, seen = [ServiceError], {}
    while todo:
        cls = todo.pop()
        seen[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return seen


def test_the_sdk_has_an_exception_for_every_problem_code() -> None:
    assert set(PROBLEM_CODES) == set(ERROR_CLASSES)
    assert set(ERROR_CODES) == set(PROBLEM_CODES) | set(JOB_ERROR_CODES) | set(CLIENT_ERROR_CODES)
    assert set(ERROR_CODES) == set(CATALOGUE)
