"""Run the real ``edge-agent`` console script of this venv in a subprocess."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def edge_agent_cmd() -> list[str]:
    script = Path(sys.executable).parent / "edge-agent"
    return [str(script)] if script.exists() else [sys.executable, "-m", "edge_agent"]


def run_cli(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*edge_agent_cmd(), *args], capture_output=True, text=True, timeout=timeout, **kw)
