"""Statistics of recorded populations: tuning, sparseness, RDM/RSA, CKA, dimensionality,
top stimuli, layer similarity. Computation only: no figures, no model. Public names are
re-exported by ``unitrec.analysis``.
"""
