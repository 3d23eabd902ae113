"""examples/own_model.py runs, and the README shows exactly its code."""

import os
import re

from conftest import REPO, run_script

EXAMPLE = os.path.join(REPO, "examples", "own_model.py")


def readme_block_after(heading):
    text = open(os.path.join(REPO, "README.md")).read()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_shows_the_example_file_as_it_is():
    assert readme_block_after("## Your own model and data") == open(EXAMPLE).read()


def test_own_model_example_trains_snapshots_and_ensembles_them(tmp_path):
    weights = tmp_path / "weights"
    result = run_script("examples/own_model.py", weights)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(weights)) == ["digits-1.weights.h5", "digits-2.weights.h5", "digits-3.weights.h5",
                                            "digits-Best.weights.h5", "digits-ensemble.json"]
    fitted = re.search(r"fitted weights: ([\d.]+)%", result.stdout)
    assert fitted and float(fitted.group(1)) > 90, result.stdout
