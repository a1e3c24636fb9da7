"""Oobleck ConvTranspose graphs from ONNX through Apache TVM to verified, loadable artifacts.

Stages, one module each: `graphs` (ONNX generation), `importer` (ONNX -> Relax), `lowering`
(Relax -> fused TIR), `tuning` (MetaSchedule and the record store), `build`, `verify`
(onnxruntime comparison), `artifact` (files and manifest) and `runtime` (the loader).
"""

from . import cuda_driver

# Before anything imports TVM: without a loadable libcuda.so.1, TVM silently builds CUDA targets
# into source-only modules.
cuda_driver.load_driver_library()

__version__ = "0.1.0"
