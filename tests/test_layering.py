"""The library's layers: no orchestration in the core, and imports that point one way.

`crosstvr_core` is read bottom-up: the foundation (config, token tables, storage, tokens
read from disk) is used by `data/` and `synthetic/` (corpora in), `models/` (the networks),
`retrieval/` (ranking with them), `training/` (fitting them, which ranks to validate), and
on top the pipeline and the reports that put everything together. Prefect and Ray live in `tasks/` and `flows/` only.
"""

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import crosstvr_core

CORE = Path(crosstvr_core.__file__).parent
FOUNDATION = {"config", "token_bank", "storage", "disk_tokens", "bank_split", "precision",
              "table_retention"}
LEVEL = {
    **dict.fromkeys(FOUNDATION, 0),
    "data": 1,
    "synthetic": 1,
    "models": 2,
    "retrieval": 3,
    "training": 4,
    "pipeline": 5,
    "report": 5,
    "gallery": 5,
    "gallery_data": 5,
}


def core_modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(crosstvr_core.__path__, "crosstvr_core.")]


def room(module: str) -> str:
    """`crosstvr_core.training.loop` -> `training`; `crosstvr_core.storage` -> `storage`."""
    return module.split(".")[1]


def core_imports(path: Path) -> set[str]:
    """The crosstvr_core modules a source file imports (absolute imports only: the library
    uses no relative ones)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "crosstvr_core":
                found.update(f"crosstvr_core.{alias.name}" for alias in node.names)
            elif node.module.startswith("crosstvr_core."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("crosstvr_core."))
    return found


def test_every_room_of_the_library_has_a_level():
    modules = core_modules()
    assert len(modules) >= 30
    assert any(m.startswith("crosstvr_core.training.") for m in modules)  # sub-packages walked
    assert {room(m) for m in modules} == set(LEVEL), "a new module needs a level in LEVEL"


def test_imports_point_down_the_layers():
    wrong = []
    for path in sorted(CORE.rglob("*.py")):
        source = "crosstvr_core." + ".".join(path.relative_to(CORE).with_suffix("").parts)
        if path.name == "__init__.py" and path.parent == CORE:
            continue
        for target in core_imports(path):
            if LEVEL[room(target)] > LEVEL[room(source)]:
                wrong.append(f"{source} imports {target}")
    assert not wrong, "imports that point up the layers:\n" + "\n".join(wrong)


def test_a_wrong_way_import_is_caught(tmp_path):
    """The check above can fail: a models module importing training is flagged."""
    bad = tmp_path / "bad.py"
    bad.write_text("from crosstvr_core.training.loop import run_epochs\n")
    (target,) = core_imports(bad)
    assert LEVEL[room(target)] > LEVEL[room("crosstvr_core.models.reranker")]


def test_core_imports_neither_prefect_nor_ray():
    modules = core_modules()
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'ray'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"crosstvr_core pulled in: {out.stdout.strip()}"
