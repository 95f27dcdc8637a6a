"""Practical margins: how large a difference to fp64 still counts as "the same physics".

An equivalence verdict needs a margin fixed before looking at the data: the two one-sided
tests (:mod:`.equivalence`) ask whether the whole confidence interval of the difference
lies inside +-margin. :data:`MARGINS` is the one table of defaults; each entry says where
its number comes from. Override any of them with ``--margin NAME=VALUE`` (``VALUE%`` for a
fraction of the reference's mean) or a TOML file ``--margins FILE`` holding a ``[margins]``
table with the same keys (``density = "0.5%"``, ``temperature = 0.1``).

Sources:

- density 0.29 % and temperature 0.064 K: the largest differences between precisions that
  the source thesis reported for its water runs (and called no change of the physics). A
  tighter margin would call the thesis' own result different; a looser one would accept
  what the thesis did not test.
- potential energy 0.043 kJ/mol/atom: 0.29 % (the density margin) of water's enthalpy of
  vaporisation (43.99 kJ/mol per molecule at 298 K, i.e. 0.128 kJ/mol per molecule or
  0.043 per atom). The same number is a tenth of the embedded model's own energy error
  against its teacher (4.5 meV/atom = 0.43 kJ/mol/atom): precision should not add more
  than a tenth of what the model already gets wrong.
- self-diffusion D 10 %: below the Yeh-Hummer finite-size correction that every
  uncorrected D of a ~1000-atom water box carries (2.837 kT / (6 pi eta L) = 0.32e-9 m^2/s
  at 300 K, eta = 0.89 mPa s, L = 2.2 nm: 14 % of 2.3e-9 m^2/s).
- NVE drift 0.025 kJ/mol/atom/ns: 0.01 kT (300 K) per atom per ns, which would heat an
  isolated box by about 1 K per ns (heat capacity ~3R per atom); below that the drift is
  irrelevant for the ps-ns runs this package makes.
- RDF 0.01 nm (integrated absolute difference, every pair): 2.5 % of the structure of
  water's O-O g(r) within 1 nm (integral of |g - 1| ~ 0.4 nm), about a 10 % change of the
  height of the first O-O peak (height ~2.8, FWHM ~0.04 nm). Physical judgement, not from
  the thesis. The noise yardstick of the RDF test is the reference's own frame-to-frame and
  seed-to-seed spread (see :mod:`.compare`), so this margin needs at least two reference
  seeds to be tested.

Observables without an entry (volume, pressure, RDF peak positions and heights) get no
verdict unless a margin is given for them.
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

RDF_PREFIX = "rdf:"


@dataclass(frozen=True)
class Margin:
    """A margin: absolute (in the observable's unit) or relative to the reference's mean."""

    value: float
    relative: bool = False
    source: str = ""

    def absolute(self, reference_mean: float) -> float:
        """The margin in the observable's unit for a given reference mean."""
        return self.value * abs(reference_mean) if self.relative else self.value

    def describe(self, unit: str = "") -> str:
        if self.relative:
            return f"{100 * self.value:g} % of the reference mean"
        return f"{self.value:g} {unit}".strip()


MARGINS: dict[str, Margin] = {
    "temperature": Margin(0.064, False, "source thesis: largest difference between precisions"),
    "density": Margin(0.0029, True, "source thesis: largest difference between precisions"),
    "potential_energy": Margin(0.043, False, "0.29 % of water's enthalpy of vaporisation"),
    "diffusion": Margin(0.10, True, "below the Yeh-Hummer finite-size correction (~14 %)"),
    "energy_drift": Margin(0.025, False, "0.01 kT per atom per ns at 300 K"),
    "rdf": Margin(0.01, False, "2.5 % of water's O-O structure within 1 nm"),
}


def margin_for(name: str, margins: Mapping[str, Margin]) -> Margin | None:
    """The margin of an observable; RDF columns ``rdf:PAIR`` fall back to ``rdf``."""
    if name in margins:
        return margins[name]
    if name.startswith(RDF_PREFIX) and "rdf" in margins:
        return margins["rdf"]
    return None


def parse_margin(name: str, text: str | float, origin: str = "--margin") -> Margin:
    """``0.1`` -> absolute, ``"0.5%"`` -> relative; errors name the option and the fix."""
    raw = str(text).strip()
    relative = raw.endswith("%")
    try:
        value = float(raw[:-1] if relative else raw)
    except ValueError:
        raise ValueError(f"{origin} {name}={raw}: the margin must be a number, or a number "
                         "with % for a fraction of the reference mean (e.g. density=0.5%).") \
            from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{origin} {name}={raw}: a margin must be positive.")
    return Margin(value / 100.0 if relative else value, relative, f"set by {origin}")


def resolve_margins(assignments: Iterable[str] = (), path: str | Path | None = None
                    ) -> dict[str, Margin]:
    """Defaults, then a TOML file's ``[margins]`` table, then ``NAME=VALUE`` assignments."""
    margins = dict(MARGINS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--margins {path}: file not found.")
        try:
            table = tomllib.loads(path.read_text()).get("margins")
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"--margins {path} is not valid TOML ({error}).") from error
        if not isinstance(table, dict):
            raise ValueError(f"--margins {path} has no [margins] table; write e.g. "
                             "[margins] density = \"0.5%\".")
        for name, value in table.items():
            margins[name] = parse_margin(name, value, f"--margins {path}:")
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--margin {assignment!r}: write NAME=VALUE, e.g. "
                             "--margin density=0.5% or --margin rdf:O-O=0.02.")
        margins[name.strip()] = parse_margin(name.strip(), value)
    return margins
