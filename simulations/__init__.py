"""openmm-mace-lp."""
