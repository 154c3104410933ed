"""The README stays true: CI runs its test command verbatim; every command it names exists."""

from __future__ import annotations

import re
from pathlib import Path

from idxlake.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _quickstart() -> list[str]:
    section = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_quickstart_has_exactly_two_commands() -> None:
    commands = _quickstart()
    assert len(commands) == 2
    assert "idxlake ingest" in commands[0] and "python -m pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _quickstart()[1] in ci


def test_every_documented_subcommand_exists() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    # Commands as written in code: after a backtick, at a line start in a code block, or after `&&`/`$`.
    documented = set(re.findall(r"(?:`|^|&& |\$ )idxlake (\w+)", README, flags=re.MULTILINE))
    assert documented <= set(sub.choices), documented - set(sub.choices)
