"""Every python block of README.md runs verbatim on a CPU-only machine (a quick start that does not run is a bug)."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_block_runs(i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    code = compile(BLOCKS[i], f"README.md python block {i}", "exec")
    exec(code, {"__name__": "__readme__"})  # noqa: S102 - running the README's code is the test
