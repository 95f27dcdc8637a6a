"""openmm-mace-lp: precision-aware MACE for OpenMM.

Data path, one module per stage:
model_files (find/verify/load) -> policy (precision table) -> backend (e3nn or cuEquivariance,
made scriptable) -> linears (policy arithmetic in dense layers) -> neighbors + export
(TorchScript module) -> potential (openmm-ml plug-in, TorchForce) -> simulations -> analysis.
"""
__version__ = "0.1.0"
