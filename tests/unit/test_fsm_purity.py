"""engine/fsm stays pure: no async library, no sockets, no adapters, no clock reads."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PURE = sorted((ROOT / "engine" / "fsm").glob("*.py")) + [ROOT / "engine" / "messages.py"]
FORBIDDEN = ("trio", "asyncio", "socket", "adapters", "time", "datetime", "threading", "random", "os",
             "anyio", "ray", "nats", "asyncpg", "selectors")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_pure_modules_exist():
    assert len(PURE) >= 5


def test_no_forbidden_imports_in_source():
    offenders = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in PURE
        for name in imported_modules(path)
        if name.split(".")[0] in FORBIDDEN
    }
    assert offenders == set()


def test_detector_catches_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import trio\nfrom adapters.freeswitch import codec\nfrom time import monotonic\n")
    assert {n.split(".")[0] for n in imported_modules(bad)} & set(FORBIDDEN) == {"trio", "adapters", "time"}


def test_importing_the_machines_loads_no_async_or_io_module():
    code = (
        "import sys; import engine.fsm.call, engine.fsm.agent, engine.fsm.queue, engine.messages;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'trio','asyncio','socket','adapters','ray','nats'});"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
