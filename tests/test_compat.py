"""fer_app.compat: ast.parse takes turns across threads on the CPythons with the shared-counter bug."""

from __future__ import annotations

import ast
import threading
from collections.abc import Callable
from typing import Any

import pytest

from fer_app import compat


@pytest.mark.parametrize(("version", "affected"), [
    ((3, 10, 14), True), ((3, 11, 7), True), ((3, 11, 8), False), ((3, 12, 1), True), ((3, 12, 2), False),
    ((3, 13, 0), False),
])
def test_ast_parse_race_versions(version: tuple[int, int, int], affected: bool) -> None:
    assert compat.ast_parse_race(version) is affected


@pytest.fixture
def bare_parse(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """`ast.parse` as Python has it (the app may have wrapped it already in this process); restored after."""
    monkeypatch.setattr(ast, "parse", getattr(ast.parse, "__wrapped__", ast.parse))
    return ast.parse


def test_serialize_ast_parse_makes_a_second_thread_wait(bare_parse: Callable[..., Any]) -> None:
    assert compat.serialize_ast_parse((3, 11, 7))
    assert ast.parse is not bare_parse and compat.serialize_ast_parse((3, 11, 7))  # idempotent: wrapped once
    assert ast.parse.__wrapped__ is bare_parse
    done = threading.Event()
    reader = threading.Thread(target=lambda: (ast.literal_eval("{'shape': (3,)}"), done.set()))  # as numpy's header
    with compat.AST_PARSE_LOCK:  # another thread's parse in progress
        reader.start()
        assert not done.wait(0.3)  # literal_eval -> ast.parse waits for it
        assert ast.literal_eval("[1, 2]") == [1, 2]  # the same thread may parse again (reentrant)
    assert done.wait(5)
    reader.join()


def test_serialize_ast_parse_leaves_fixed_pythons_alone(bare_parse: Callable[..., Any]) -> None:
    assert not compat.serialize_ast_parse((3, 12, 2))
    assert ast.parse is bare_parse
