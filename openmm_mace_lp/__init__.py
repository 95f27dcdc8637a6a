"""openmm-mace-lp: precision-aware MACE for OpenMM.

Data path, one module per stage:
model_files (find/verify/load) -> policy (precision table) -> backend (e3nn or cuEquivariance,
made scriptable) -> linears (policy arithmetic in dense layers) -> neighbors + export
(TorchScript module) -> potential (openmm-ml plug-in, TorchForce) -> simulations -> analysis.

Importing the package imports torch and registers the native operators (``native.load``: the
``mace_lp`` library, or one warning and the TorchScript fallback), and leaves ``torch.load`` as
it was: mace and e3nn are imported on first use through ``upstream.import_mace``. It does install
filters for the known-harmless upstream warnings listed in ``upstream.HARMLESS_WARNINGS``.
"""
from . import native as _native
from .upstream import install_warning_filters as _install_warning_filters

__version__ = "0.1.0"

_install_warning_filters()
_native.load()
