"""The library stays free of orchestration: importing every core module loads no Prefect/Ray."""

import pkgutil
import subprocess
import sys

import crosstvr_core


def test_core_imports_neither_prefect_nor_ray():
    modules = [f"crosstvr_core.{m.name}" for m in pkgutil.iter_modules(crosstvr_core.__path__)]
    assert len(modules) >= 10
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'ray'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"crosstvr_core pulled in: {out.stdout.strip()}"
