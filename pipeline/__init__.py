"""Oobleck ConvTranspose graphs from ONNX through Apache TVM to verified, loadable artifacts.

Stages, one module each: `graphs` (ONNX generation), `importer` (ONNX -> Relax), `lowering`
(Relax -> fused TIR), `tuning` (MetaSchedule and the record store), `build`, `verify`
(onnxruntime comparison), `artifact` (files and manifest) and `runtime` (the loader).
"""

from . import cpu_threads, cuda_driver

# Before anything imports TVM: without a loadable libcuda.so.1, TVM silently builds CUDA targets
# into source-only modules.
cuda_driver.load_driver_library()
# Before TVM runs a kernel: it would otherwise use half the cores on x86 (see cpu_threads).
cpu_threads.configure_tvm_threads()

__version__ = "0.1.0"
