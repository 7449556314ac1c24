"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "registry"]


def run_cli(data: Path, *args: str, env: dict[str, str] | None = None, expect: int | None = 0,
            ) -> subprocess.CompletedProcess:
    """`registry --data-dir DATA ARGS...` as a real process; asserts its exit status unless `expect` is None."""
    result = subprocess.run([*CLI, "--data-dir", str(data), *args], capture_output=True, text=True, timeout=600,
                            env={**os.environ, **(env or {})})
    if expect is not None:
        assert result.returncode == expect, result.stderr[-3000:]
    return result
