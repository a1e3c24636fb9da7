"""Where the project's data folders are: `graphs/` (Oobleck configs, ConvTranspose conformance
cases) and `schedules/` (the committed tuning records).

They live beside the package in the project's checkout, which an editable install (`pip install
-e .`) runs from. A wheel (`pip install .` or `pip install git+...`) carries a copy of them inside
the package, as `pipeline/data/<name>/` (see pyproject.toml), so named graphs build and committed
records apply there too."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def runs_from_checkout(package_dir: Path = PACKAGE_DIR) -> bool:
    return (package_dir.parent / "pyproject.toml").is_file()


def data_folder(name: str, package_dir: Path = PACKAGE_DIR) -> Path:
    """`<checkout>/<name>`, or the copy a wheel installed in `pipeline/data/<name>`."""
    if runs_from_checkout(package_dir):
        return package_dir.parent / name
    return package_dir / "data" / name


def inside_installed_package(path: Path, package_dir: Path = PACKAGE_DIR) -> bool:
    """Whether `path` lies in the installed package, where the next install or upgrade replaces it."""
    return not runs_from_checkout(package_dir) and Path(path).resolve().is_relative_to(package_dir)
