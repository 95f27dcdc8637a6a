"""openmm-mace-lp systems: structure builders (:mod:`.builders`), ready structures
(``structures/``), the GFN2-xTB water data (``data/``), the embedded model (``models/``)
and the recipes that regenerate them (:mod:`.recipes`)."""
