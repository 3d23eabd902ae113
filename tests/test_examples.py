"""examples/own_model.py runs, and the README shows exactly its code; the package's declared dependencies."""

import os
import re
import runpy
import sys
import tomllib

from conftest import REPO

EXAMPLE = os.path.join(REPO, "examples", "own_model.py")


def readme_block_after(heading):
    text = open(os.path.join(REPO, "README.md")).read()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_shows_the_example_file_as_it_is():
    assert readme_block_after("## Your own model and data") == open(EXAMPLE).read()


def test_own_model_example_trains_snapshots_and_ensembles_them(tmp_path, monkeypatch, capsys):
    weights = tmp_path / "weights"
    # As the README runs it from the checkout (python -m examples.own_model): the example touches no sys.path.
    assert "sys.path" not in open(EXAMPLE).read()
    monkeypatch.setattr(sys, "argv", [EXAMPLE, str(weights)])
    runpy.run_module("examples.own_model", run_name="__main__", alter_sys=True)
    assert sorted(os.listdir(weights)) == ["digits-1.weights.h5", "digits-2.weights.h5", "digits-3.weights.h5",
                                            "digits-Best.weights.h5", "digits-ensemble.json"]
    out = capsys.readouterr().out
    fitted = re.search(r"fitted weights: ([\d.]+)%", out)
    assert fitted and float(fitted.group(1)) > 90, out


def requirement_lines(name):
    with open(os.path.join(REPO, name)) as fh:
        return [line.split("#")[0].strip() for line in fh if line.split("#")[0].strip()]


def test_the_package_declares_what_requirements_txt_installs_and_ships_its_data():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as fh:
        project = tomllib.load(fh)
    assert project["project"]["dependencies"] == requirement_lines("requirements.txt")
    extras = project["project"]["optional-dependencies"]
    assert extras["test"] == requirement_lines("requirements-test.txt")
    assert extras["backends"] == [line for line in requirement_lines("requirements-backends.txt") if line[0] != "-"]
    assert [line.split(">")[0] for line in extras["plot"]] == ["matplotlib"]
    assert project["tool"]["setuptools"]["package-data"]["snapshot_ensembles.release"] == ["release_data/*.json"]
