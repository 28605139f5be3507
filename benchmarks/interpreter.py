"""Which Python a benchmark ran on: Python's figures depend on how CPython was built
(README, Speed: a default pyenv build takes about 1.3 times the CPU of a PGO + LTO one)."""

from __future__ import annotations

import os
import subprocess
import sys


def describe(python: str = sys.executable) -> str:
    """``Python 3.11.2 at /usr/bin/python3.11`` for the interpreter ``python`` runs."""
    if python == sys.executable:
        version = sys.version.split()[0]
        path = os.path.realpath(sys.executable)
    else:
        version, path = subprocess.run(
            [python, "-c", "import os, sys; print(sys.version.split()[0], os.path.realpath(sys.executable))"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout.split()
    return f"Python {version} at {path}"
