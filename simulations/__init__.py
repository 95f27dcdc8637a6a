"""Simulation recipes: NVT/NPT/NVE water with MACE in any precision policy, from a TOML config.

One concern per module: ``config`` (load, validate, resolve), ``structure`` (starting
structure), ``platforms`` (platform/device), ``openmm_setup`` (System, integrators,
barostat), ``reporters`` (state CSV, DCD, progress bar), ``guards``, ``checkpoint``,
``manifest``, ``run`` (the recipe), ``arms`` (policies x seeds), ``presets`` (the main job),
``summary`` and ``cli``. See README.md in this folder.
"""
