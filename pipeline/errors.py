"""Exceptions a user of the pipeline can meet.

Every message says what was wrong and what to do about it, so the CLI can print it as is.
"""


class PipelineError(Exception):
    """Base of every error this package raises on purpose."""


class GraphError(PipelineError):
    """A graph name, config or ONNX file that cannot be used."""


class UnsupportedModelError(PipelineError):
    """An ONNX model that imports but cannot be compiled (dynamic shapes, unknown ops, ...)."""


class TargetError(PipelineError):
    """A target that cannot be resolved or built for on this machine."""


class BuildError(PipelineError):
    """Compilation or export failed."""


class VerificationError(PipelineError):
    """A build whose outputs disagree with onnxruntime beyond the stated tolerances."""


class ArtifactError(PipelineError):
    """An artifact directory that is missing, incomplete or unreadable."""


class ArtifactIntegrityError(ArtifactError):
    """A file of an artifact whose sha256 differs from the manifest."""


class ArtifactVersionError(ArtifactError):
    """An artifact built with another TVM version than the one installed."""


class DeviceError(ArtifactError):
    """An artifact for a device this machine does not have: a GPU (or its architecture), a CPU
    instruction set, another CPU architecture."""


class UnverifiedArtifactError(ArtifactError):
    """An artifact whose build failed verification."""


class InputError(PipelineError):
    """Inputs passed to a loaded model that do not match its manifest."""


class TuningError(PipelineError):
    """Tuning could not run, or its records cannot be read or merged."""
