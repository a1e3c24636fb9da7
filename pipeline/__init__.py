"""Oobleck ConvTranspose graphs from ONNX through Apache TVM to verified, loadable artifacts.

Stages, one module each: `graphs` (ONNX generation), `importer` (ONNX -> Relax), `lowering`
(Relax -> fused TIR), `tuning` (MetaSchedule and the record store), `build`, `verify`
(onnxruntime comparison), `artifact` (files and manifest) and `runtime` (the loader).
"""

__version__ = "0.1.0"
