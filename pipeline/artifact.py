"""The deployment artifact: `<root>/<graph>/<target-key>/` with the library, weights, source ONNX and
`manifest.json`, which records how the library was made and the sha256 of every file.

An artifact is assembled in a hidden staging folder beside its final place and moved there in one
rename once complete, so an interrupted or failed build never damages the artifact already there.
A build that fails verification is kept for inspection under `<target-key>.failed/` instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .errors import ArtifactError, ArtifactIntegrityError
from .importer import TensorSpec

FORMAT = "pipeline-artifact/2"
MANIFEST = "manifest.json"
def library_name(sha256: str) -> str:
    """The library is named by its content: a process that loaded one build keeps it mapped, and
    dlopen hands the same mapping back for the same path, so a rebuilt artifact at the same place
    must not reuse the name."""
    return f"model-{sha256[:16]}.so"


PARAMS = "params.npz"
SOURCE_ONNX = "model.onnx"
ARTIFACTS_DIR = Path("artifacts")


@dataclass(frozen=True)
class GraphRecord:
    name: str
    origin: str
    onnx_sha256: str
    latent_frames: int | None
    seed: int | None
    # The static shapes a user's ONNX file with symbolic input dimensions was built for.
    input_shapes: dict[str, list[int]] | None = None


@dataclass(frozen=True)
class TargetRecord:
    kind: str
    key: str
    config: dict


@dataclass(frozen=True)
class DeviceCode:
    """The GPU code inside the library: `format` is what the driver loads (fatbin or ptx), never
    kernel source, which would need a compiler on the deployment machine."""

    kind: str
    arch: str
    format: str
    host: dict


@dataclass(frozen=True)
class AppliedSchedules:
    """Which kernels of a build got a tuned schedule, and from which records."""

    store: str
    records_sha256: str | None
    kernels: list[str]
    tuned: list[str]


@dataclass(frozen=True)
class OutputCheck:
    name: str
    max_abs_error: float
    max_rel_error: float
    passed: bool


@dataclass(frozen=True)
class Float64Check:
    """One output of ours and of onnxruntime against the float64 numpy reference (pipeline.reference)
    on the same inputs: the rms of each error relative to the rms of the reference."""

    name: str
    ours_rms_rel_error: float
    onnxruntime_rms_rel_error: float


@dataclass(frozen=True)
class Verification:
    """`max_rel_error` is max|ours - reference| / max|reference|; an output passes when
    max_abs_error <= atol + rtol * max|reference| and both agree on where values are non-finite.
    `float64`: how close both sides are to exact, for the named Oobleck graphs (None for an ONNX file,
    which has no independent reference)."""

    reference: str
    input_seed: int
    rtol: float
    atol: float
    outputs: list[OutputCheck]
    float64: list[Float64Check] | None = None

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)


@dataclass(frozen=True)
class Manifest:
    format: str
    graph: GraphRecord
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    params: list[TensorSpec]
    target: TargetRecord
    lowering: str
    versions: dict[str, str]
    tuning: AppliedSchedules
    files: dict[str, str]
    build_seconds: float
    library: str
    verification: Verification | None = None
    device_code: DeviceCode | None = None
    # Why `verification` is missing: a GPU build made where no such GPU is present.
    verification_pending: str | None = None
    # A GPU build's kernels, as scheduled for the GPU, run on the build machine's CPU against onnxruntime
    # (`build --emulate-on-host`): checks the schedules, not the device code.
    host_emulation: Verification | None = None

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        for name in ("verification", "host_emulation"):
            if getattr(self, name) is not None:
                data[name]["passed"] = getattr(self, name).passed
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        specs = lambda items: [TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in items]  # noqa: E731
        return cls(
            format=data["format"],
            graph=GraphRecord(**data["graph"]),
            inputs=specs(data["inputs"]),
            outputs=specs(data["outputs"]),
            params=specs(data["params"]),
            target=TargetRecord(**data["target"]),
            lowering=data["lowering"],
            versions=data["versions"],
            tuning=AppliedSchedules(**data["tuning"]),
            files=data["files"],
            build_seconds=data["build_seconds"],
            library=data["library"],
            verification=_verification(data.get("verification")),
            device_code=DeviceCode(**data["device_code"]) if data.get("device_code") else None,
            verification_pending=data.get("verification_pending"),
            host_emulation=_verification(data.get("host_emulation")),
        )


def _verification(data: dict | None) -> Verification | None:
    if data is None:
        return None
    fields = {k: v for k, v in data.items() if k != "passed"}  # `passed` is derived from the outputs
    exact = data.get("float64")
    return Verification(
        **{
            **fields,
            "outputs": [OutputCheck(**o) for o in data["outputs"]],
            "float64": None if exact is None else [Float64Check(**o) for o in exact],
        }
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("apache-tvm", "apache-tvm-ffi", "onnx", "onnxruntime", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def artifact_dir(root: Path | str, graph: str, target_key: str) -> Path:
    return Path(root) / graph / target_key


def read_manifest(path: Path | str) -> Manifest:
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(
            f"{path} is not an artifact: it has no {MANIFEST}. Give the folder that `python -m pipeline "
            f"build` printed (artifacts/<graph>/<target-key>)"
        )
    try:
        manifest = Manifest.from_json(manifest_path.read_text())
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{manifest_path} is unreadable ({exc}); rebuild the artifact") from exc
    if manifest.format != FORMAT:
        raise ArtifactError(f"{path} has format {manifest.format!r}, this version reads {FORMAT!r}; rebuild it")
    return manifest


def check_files(path: Path, manifest: Manifest) -> None:
    for name, expected in manifest.files.items():
        file = path / name
        if not file.is_file():
            raise ArtifactIntegrityError(f"{file} is missing; the artifact is incomplete: rebuild it")
        actual = sha256_file(file)
        if actual != expected:
            raise ArtifactIntegrityError(
                f"{file} has sha256 {actual[:16]}..., the manifest says {expected[:16]}...: the file was "
                f"changed after the build. Do not use it; rebuild the artifact"
            )


def write_manifest(path: Path, manifest: Manifest) -> None:
    tmp = path / (MANIFEST + ".tmp")
    tmp.write_text(manifest.to_json())
    tmp.replace(path / MANIFEST)


class StagedArtifact:
    """A folder being filled for `final`; `commit()` moves it into place."""

    def __init__(self, final: Path) -> None:
        self.final = Path(final)
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self.dir = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.staging-", dir=self.final.parent))
        except OSError as exc:
            raise ArtifactError(
                f"cannot write the artifact under {self.final.parent} ({exc.strerror}); "
                f"choose a writable folder with --out"
            ) from exc

    def hash_files(self) -> dict[str, str]:
        return {p.name: sha256_file(p) for p in sorted(self.dir.iterdir()) if p.name != MANIFEST}

    def commit(self, passed: bool) -> Path:
        destination = self.final if passed else self.final.with_name(self.final.name + ".failed")
        previous = None
        if destination.exists():
            previous = destination.with_name(destination.name + ".previous")
            shutil.rmtree(previous, ignore_errors=True)
            destination.rename(previous)
        self.dir.rename(destination)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
        if passed:
            shutil.rmtree(self.final.with_name(self.final.name + ".failed"), ignore_errors=True)
        return destination

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
