"""Analysis layer of openmm-mace-lp: did a cheaper precision change the physics?

Modules, one concern each (import them directly; this package imports nothing heavy so
that ``mace-lp --help`` stays fast):

- :mod:`.rundir`        read run directories (manifest, state CSV, trajectory) with clear errors
- :mod:`.timeseries`    statistical inefficiency, block averaging, equilibration detection
- :mod:`.uncertainty`   estimates with uncertainties, seed combination, verdicts vs a reference
- :mod:`.observables`   RDF, MSD/diffusion, NVE drift, state-CSV observables
- :mod:`.analyze`       all observables of one run
- :mod:`.compare`       every precision arm against the FP64 reference
- :mod:`.static_errors` static energy/force errors of a policy against FP64
- :mod:`.structures`    structures for the static errors (extended XYZ or trajectory)
- :mod:`.plots`, :mod:`.report`, :mod:`.tables` figures and the Markdown/HTML report
- :mod:`.cli`           ``mace-lp analyze | compare | report | static``
"""
