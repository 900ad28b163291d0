"""Workarounds for bugs of the Python the app runs on, each with the versions it is needed on.

CPython before 3.11.8, and 3.12 before 3.12.2, keep `ast.parse`'s recursion depth in one
process-wide counter (python/cpython#106905; 3.10 never got the fix, so it is counted in). When a
garbage collection inside one thread's parse lets another thread parse too, the first fails with
"SystemError: AST constructor recursion depth mismatch". The Streamlit app meets it: a page's
script is parsed (Streamlit's magic) while the model loads in a thread of its own, which reads an
.npz, and numpy parses each array header with `ast.literal_eval`. `serialize_ast_parse` makes the
parses take turns, on those versions only.
"""

from __future__ import annotations

import ast
import functools
import sys
import threading
from typing import Any

__all__ = ["AST_PARSE_LOCK", "ast_parse_race", "serialize_ast_parse"]

AST_PARSE_LOCK = threading.RLock()  # reentrant: a parse may run another in the same thread (a finalizer)


def ast_parse_race(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> bool:
    """Whether this CPython's `ast.parse` can fail when two threads parse at once (see the module doc)."""
    return version < (3, 11, 8) or (3, 12) <= version < (3, 12, 2)


def serialize_ast_parse(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> bool:
    """Make `ast.parse` (and `ast.literal_eval`, which calls it) take `AST_PARSE_LOCK` on the affected versions.

    Idempotent; returns whether `ast.parse` is serialized now. Callers that took `from ast import parse`
    before this ran keep the bare function: call it before starting threads.
    """
    if getattr(ast.parse, "__fer_app_serialized__", False):
        return True
    if not ast_parse_race(version):
        return False
    bare = ast.parse

    @functools.wraps(bare)
    def parse(*args: Any, **kwargs: Any) -> Any:
        with AST_PARSE_LOCK:
            return bare(*args, **kwargs)

    parse.__fer_app_serialized__ = True  # type: ignore[attr-defined]
    ast.parse = parse
    return True
