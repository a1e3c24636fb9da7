"""graphs/ and schedules/: found beside the package in the checkout, inside it when installed from a
wheel, and every file of theirs goes into the wheel."""

import tomllib
from pathlib import Path

import pytest

from pipeline import data_files, tuning
from pipeline.data_files import PACKAGE_DIR, data_folder, inside_installed_package
from pipeline.errors import TuningError
from pipeline.graphs import GRAPHS_DIR, GraphSelection
from pipeline.tuning import SCHEDULES_DIR, TuneOptions, tune

CHECKOUT = PACKAGE_DIR.parent


def _installed_package(root: Path) -> Path:
    """A package folder as a wheel installs it: site-packages/pipeline, no pyproject.toml beside it."""
    package = root / "site-packages" / "pipeline"
    (package / "data" / "schedules").mkdir(parents=True)
    return package


def test_the_checkout_uses_its_own_folders():
    assert GRAPHS_DIR == CHECKOUT / "graphs" and SCHEDULES_DIR == CHECKOUT / "schedules"
    assert not inside_installed_package(SCHEDULES_DIR)


def test_an_installed_package_uses_the_copy_it_carries(tmp_path):
    package = _installed_package(tmp_path)
    assert data_folder("graphs", package) == package / "data" / "graphs"
    assert inside_installed_package(package / "data" / "schedules", package)
    assert not inside_installed_package(tmp_path / "my-records", package)


def test_the_wheel_carries_every_file_of_graphs_and_schedules():
    """The package-data patterns of pyproject.toml, globbed as setuptools globs them."""
    setuptools = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package, folder in setuptools["package-dir"].items():
        assert package in setuptools["packages"]
        root = CHECKOUT / folder
        carried = {path for pattern in setuptools["package-data"][package] for path in root.glob(pattern)}
        on_disk = {path for path in root.rglob("*") if path.is_file() and "__pycache__" not in path.parts}
        assert on_disk and on_disk <= carried, sorted(str(p.relative_to(root)) for p in on_disk - carried)


def test_tune_does_not_write_into_an_installed_package(tmp_path, monkeypatch):
    package = _installed_package(tmp_path)
    monkeypatch.setattr(tuning, "inside_installed_package", lambda path: data_files.inside_installed_package(path, package))
    options = TuneOptions(GraphSelection(graph="convt5", config="tiny"), schedules=package / "data" / "schedules")
    with pytest.raises(TuningError, match="inside the installed package.*--schedules DIR"):
        tune(options)
    assert not any((package / "data" / "schedules").iterdir())
