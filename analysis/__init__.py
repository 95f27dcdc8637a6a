"""Analysis layer of openmm-mace-lp: did a cheaper precision change the physics?

Modules, one concern each (import them directly; this package imports nothing heavy so
that ``mace-lp --help`` stays fast):

- :mod:`.rundir`        read run directories (manifest, state CSV, trajectory) with clear errors
- :mod:`.timeseries`    statistical inefficiency, block averaging, equilibration detection
- :mod:`.uncertainty`   estimates with uncertainties, seed combination
- :mod:`.support`       what the data can support: every case a number would be over-read
- :mod:`.margins`       the one table of equivalence margins, with their sources
- :mod:`.equivalence`   TOST, Holm, three-way verdicts (equivalent / different / inconclusive)
- :mod:`.observables`   RDF, MSD/diffusion, NVE drift, state-CSV observables
- :mod:`.analyze`       all observables of one run
- :mod:`.compare`       every precision arm against the FP64 reference
- :mod:`.study`         the precision-study record (JSON) and the thesis' Tables 4.4/4.5
- :mod:`.static_errors` static energy/force errors of a policy against FP64
- :mod:`.structures`    structures for the static errors (extended XYZ or trajectory)
- :mod:`.plots`, :mod:`.report`, :mod:`.tables` figures and the Markdown/HTML report
  (arms, or one run: :func:`.report.write_run_report`)
- :mod:`.cli`           ``mace-lp analyze | compare | report | static``
"""
