"""The object openmm-ml finds through the ``openmmml.potentials`` entry point.

openmm-ml loads every entry point while ``openmmml.mlpotential`` is being imported. A factory
module that itself imported openmmml at the top would therefore re-enter its own import when
a script imports it (or ``openmm_mace_lp.potential``) before openmmml, and fail with a
circular-import error. This module imports nothing from openmmml; the implementation, which
subclasses openmm-ml's ``MLPotentialImpl``, is imported when a potential is created. openmm-ml
only calls ``createImpl`` on a registered factory.
"""
from __future__ import annotations

from typing import Optional

from .policy import DEFAULT_POLICY


class MACELPPotentialImplFactory:
    """openmm-ml factory for ``mace-lp``, ``mace-off24-lp`` and ``mace-off23-*-lp``."""

    def createImpl(self, name: str, modelPath: Optional[str] = None, policy: str = DEFAULT_POLICY,
                   backend: str = "auto", **args):
        from .potential import MACELPPotentialImpl

        return MACELPPotentialImpl(name, modelPath, policy, backend)
