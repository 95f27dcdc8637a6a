"""The object openmm-ml finds through the ``openmmml.potentials`` entry point.

openmm-ml loads every entry point while ``openmmml.mlpotential`` is being imported. A factory
module that itself imported openmmml at the top would therefore re-enter its own import when
a script imports it (or ``openmm_mace_lp.potential``) before openmmml, and fail with a
circular-import error. This module imports nothing from openmmml; the implementation, which
subclasses openmm-ml's ``MLPotentialImpl``, is imported when a potential is created. openmm-ml
only calls ``createImpl`` on a registered factory.

openmm-ml looks names up in a plain dict, so a misspelt name (``MLPotential("mace-of24-lp")``)
ends in a bare ``KeyError: 'mace-of24-lp'``. When openmm-ml constructs this factory, its
registry is given a ``__missing__`` that says which names exist (it stays a dict, and the
error stays a KeyError).
"""
from __future__ import annotations

import difflib
import sys
from typing import Optional

from .policy import DEFAULT_POLICY


class UnknownPotentialName(KeyError):
    """A name no openmm-ml potential is registered under (a KeyError, as openmm-ml's was)."""

    def __str__(self) -> str:  # KeyError would show the message quoted
        return str(self.args[0])


class PotentialRegistry(dict):
    """openmm-ml's name -> factory dict, with an error that lists the valid names."""

    def __missing__(self, name):
        names = sorted(self)
        close = difflib.get_close_matches(str(name), names, n=3)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownPotentialName(
            f"Unknown potential name {name!r}.{hint} Valid names: {', '.join(names)}. "
            f"(openmm-mace-lp registers mace-lp, mace-off24-lp and mace-off23-{{small,medium,large}}-lp.)"
        )


def install_name_check() -> None:
    """Give openmm-ml's registry, if it is being built, the error above (idempotent)."""
    module = sys.modules.get("openmmml.mlpotential")
    potential = getattr(module, "MLPotential", None)
    registry = getattr(potential, "_implFactories", None)
    if isinstance(registry, dict) and not isinstance(registry, PotentialRegistry):
        potential._implFactories = PotentialRegistry(registry)


class MACELPPotentialImplFactory:
    """openmm-ml factory for ``mace-lp``, ``mace-off24-lp`` and ``mace-off23-*-lp``."""

    def __init__(self) -> None:
        install_name_check()

    def createImpl(self, name: str, modelPath: Optional[str] = None, policy: str = DEFAULT_POLICY,
                   backend: str = "auto", **args):
        from .potential import MACELPPotentialImpl, refuse_unknown_keywords

        refuse_unknown_keywords(args, ("modelPath", "policy", "backend"), f"MLPotential({name!r})")
        return MACELPPotentialImpl(name, modelPath, policy, backend)
