"""mve/_fastroute.pyi states the extension's API: every name and method in it exists, and back."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import mve._fastroute as fastroute

STUB = Path(fastroute.__file__).with_name("_fastroute.pyi")


def stub_api() -> dict[str, set[str] | None]:
    """Top-level names of the stub; for a class, the set of its public members and __init__."""
    api: dict[str, set[str] | None] = {}
    for node in ast.parse(STUB.read_text()).body:
        if isinstance(node, ast.ClassDef):
            api[node.name] = {
                item.name for item in node.body if isinstance(item, ast.FunctionDef) and item.name != "__init__"
            }
        elif isinstance(node, ast.FunctionDef):
            api[node.name] = None
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            api[node.target.id] = None
    return api


def module_api() -> dict[str, set[str] | None]:
    api: dict[str, set[str] | None] = {}
    for name, value in vars(fastroute).items():
        if name.startswith("__") or inspect.ismodule(value):
            continue
        if inspect.isclass(value):
            api[name] = {member for member in vars(value) if not member.startswith("_")}
        elif callable(value) or isinstance(value, int):
            api[name] = None
    return api


def test_the_stub_and_the_extension_have_the_same_api():
    assert stub_api() == module_api()


def test_every_public_class_and_method_has_a_docstring():
    for name, members in module_api().items():
        value = getattr(fastroute, name)
        if isinstance(value, int):
            continue
        assert value.__doc__, name
        for member in members or ():
            assert getattr(value, member).__doc__, f"{name}.{member}"
