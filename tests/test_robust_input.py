"""Hostile but fair input never crashes llmcompat: bounded YAML, checked result files.

Each test feeds the real loader or the real CLI (``matrix.app.cli.main``) and expects exit 2 with a
message that names the file and where in it, never a traceback.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from matrix.app.cli import main
from matrix.declare import loader
from matrix.errors import ConfigError


def alias_bomb(levels: int, width: int = 9) -> str:
    """The classic "billion laughs" in YAML: each level is a list of ``width`` aliases of the last."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [7, 9])
def test_alias_bomb_is_refused_fast_with_file_and_line(tmp_path, levels, capsys):
    path = tmp_path / "axes.yaml"
    path.write_text(alias_bomb(levels))
    started = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        loader.load(path)
    assert time.perf_counter() - started < 5  # unbounded: 7 levels took 21 s, 9 never finished
    assert err.value.file == str(path) and err.value.line is not None
    assert "alias" in err.value.message
    assert main(["plan", "--offline", "--axes", str(path)]) == 2
    out = capsys.readouterr().err
    assert f"{path}:{err.value.line}:" in out and "alias bomb" in out and "Traceback" not in out


def test_too_many_aliases_are_refused_at_the_first_one_over(tmp_path):
    anchors = "base: &b {x: 1}\n"
    uses = "".join(f"k{i}: *b\n" for i in range(loader.MAX_ALIASES + 5))
    path = tmp_path / "axes.yaml"
    path.write_text(anchors + uses)
    with pytest.raises(ConfigError) as err:
        loader.load(path)
    assert err.value.line == loader.MAX_ALIASES + 2  # line 1 is the anchor; the 101st alias is on line 102
    assert err.value.value == "*b" and "more than" in err.value.message


def test_a_few_aliases_still_work(tmp_path):
    """Ordinary anchors (shared version rules, merge keys) stay allowed: the cap only stops bombs."""
    text = Path(loader.DEFAULT_PATH).read_text()
    data, _ = loader._parse(text + "\n_shared: &s {latest: 1}\n_use: [*s, *s]\n", "x.yaml")
    assert data["_use"] == [{"latest": 1}, {"latest": 1}]
