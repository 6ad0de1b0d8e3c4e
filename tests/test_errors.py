"""One error family: every exception tenfold raises on purpose derives from
``tenfold.TenfoldError`` (keeping the built-in parent users may catch)."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import tenfold

SRC = Path(__file__).resolve().parents[1] / "src"

#: Built-in exceptions a module must not raise itself: a user catching TenfoldError would
#: miss them.
BUILTINS = {"ValueError", "TypeError", "RuntimeError", "KeyError", "IndexError", "OSError"}

#: Raises of a built-in that are deliberate, with the reason.
ALLOWED = {
    # an internal invariant of the Huffman stream layout: a bug, never bad input
    ("tenfold/codec/huffman.py", "RuntimeError"),
}


def _modules() -> list[str]:
    out = []
    for path in sorted((SRC / "tenfold").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts[-1] != "__main__":  # running it is the CLI
            out.append(".".join(parts))
    return out


def test_no_module_raises_a_bare_builtin_exception() -> None:
    bad = []
    for path in sorted((SRC / "tenfold").rglob("*.py")):
        rel = str(path.relative_to(SRC))
        for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
            if not isinstance(node, ast.Raise) or not isinstance(node.exc, ast.Call):
                continue
            func = node.exc.func
            named = isinstance(func, ast.Name) and func.id in BUILTINS
            if named and (rel, func.id) not in ALLOWED:  # type: ignore[union-attr]
                bad.append(f"{rel}:{node.lineno} raise {func.id}(...)")  # type: ignore[union-attr]
    assert not bad, "raise a tenfold.errors class (ConfigError, InputTypeError, ...): " + str(bad)


@pytest.mark.parametrize("module", _modules())
def test_every_exception_class_is_a_tenfold_error(module: str) -> None:
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:  # an optional extra that is not installed
        pytest.skip(str(exc))
    for name, obj in vars(mod).items():
        if (
            inspect.isclass(obj)
            and issubclass(obj, BaseException)
            and obj.__module__ == mod.__name__
        ):
            assert issubclass(obj, tenfold.TenfoldError), f"{module}.{name}"
