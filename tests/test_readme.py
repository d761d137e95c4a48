"""Every Python example in README.md runs, against a tiny run directory standing in for the demo's model."""

import re
from pathlib import Path

import pytest
from synthetic import write_run

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_examples():
    assert len(python_blocks()) >= 2 and all("runs/demo/model" not in b for b in python_blocks()[1:])


@pytest.mark.slow
def test_every_readme_python_example_runs(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    namespace: dict = {}
    for block in python_blocks():  # later blocks use what earlier ones defined, as a reader would
        exec(compile(block.replace("runs/demo/model", str(run)), str(README), "exec"), namespace)
    assert namespace["image"].size == (16, 16) and isinstance(namespace["caption"], str)
    assert len(namespace["frames"]) == 10 and len(namespace["pairs"].images) == 2
    # the kept words stay; the untrained model may fill [MASK] with <|endoftext|>, which ends the caption there
    assert namespace["filled"].startswith("a large") and len(namespace["images"]) == 2
    assert "MaskGITScheduler(" in capsys.readouterr().out
