"""Shell completion through typer's own mechanism: the script it installs, and the answers the
shell gets from it (the same protocol bash runs: _RARP_ANNOUNCE_COMPLETE with COMP_WORDS)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import require

SCRIPT = Path(sys.executable).with_name("rarp-announce")  # the console script pip installed


def _complete(words: str) -> list[str]:
    env = dict(os.environ, _RARP_ANNOUNCE_COMPLETE="complete_bash", COMP_WORDS=words,
               COMP_CWORD=str(len(words.split(" ")) - 1))  # a trailing space: a new, empty word
    result = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_show_completion_prints_a_bash_script_for_the_command() -> None:
    require(SCRIPT.exists(), "needs the installed console script (pip install -e .)")
    result = subprocess.run([str(SCRIPT), "--show-completion", "bash"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "complete -o default -F _rarp_announce_completion rarp-announce" in result.stdout


def test_the_shell_is_offered_commands_and_options() -> None:
    require(SCRIPT.exists(), "needs the installed console script (pip install -e .)")
    assert _complete("rarp-announce doc") == ["doctor"]
    assert _complete("rarp-announce doctor --do") == ["--domain"]
    assert set(_complete("rarp-announce hook ")) >= {"install", "uninstall", "status", "wait"}
