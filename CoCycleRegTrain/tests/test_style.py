"""The whole repository passes ruff's lint rules and formatting (configuration: ruff.toml)."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPOSITORY


def _ruff(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *arguments, str(REPOSITORY)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPOSITORY,
    )


def test_ruff_lint_is_clean():
    result = _ruff("check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean():
    result = _ruff("format", "--check")
    assert result.returncode == 0, result.stdout + result.stderr
