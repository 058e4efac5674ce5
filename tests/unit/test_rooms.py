"""The house reads top-down: each room imports only the rooms below it (see the README's folder table).

bookrec's CLI (cli, commands, plot), bench, dashboard, scheduler, producer, worker/serve (with worker/jobs.py), ingest, worker/learn,
model_store, ratings, shared. Checked on the source with `ast`, imports inside functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "bookrec"
HOUSE = (
    "cli",
    "bench",
    "dashboard",
    "scheduler",
    "producer",
    "serve",
    "ingest",
    "learn",
    "model_store",
    "ratings",
    "shared",
)
WORKER_SIDE = {"tensorflow", "keras", "pandas", "numpy", "matplotlib", "sklearn", "scipy"}


def room(module: str) -> str | None:
    """The room a `bookrec.…` module belongs to (None for the namespace root and worker/__init__)."""
    parts = module.split(".")
    if parts[0] != "bookrec" or len(parts) == 1:
        return None
    if parts[1] in ("cli", "commands", "plot", "__main__"):
        return "cli"
    if parts[1] == "worker":
        if len(parts) == 2:
            return None
        return "serve" if parts[2] in ("serve", "jobs") else parts[2]
    return parts[1]


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports (absolute names), at any depth."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_imports_only_rooms_below_its_own(path: Path) -> None:
    here = room(module_name(path))
    if here is None:
        assert not {room(m) for m in imports(path)} - {None}, "the namespace root imports nothing"
        return
    above = {m for m in imports(path) if (r := room(m)) is not None and HOUSE.index(r) < HOUSE.index(here)}
    assert not above, f"{here} imports {sorted(above)} from a room above it"


@pytest.mark.parametrize("path", [p for p in SOURCES if room(module_name(p)) == "shared"], ids=lambda p: p.name)
def test_the_contract_needs_no_worker_side_library_and_no_argparse(path: Path) -> None:
    heavy = {m.split(".")[0] for m in imports(path)} & (WORKER_SIDE | {"argparse"})
    assert not heavy, f"shared/{path.name} imports {sorted(heavy)}"


def test_the_rooms_exist_and_every_module_is_in_one() -> None:
    rooms = {room(module_name(p)) for p in SOURCES}
    assert rooms == set(HOUSE) | {None}
