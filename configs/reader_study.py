"""Analysis of a reader study on its own (no model): readers' operating points and ROC, and the
Obuchowski-Rockette MRMC comparison of two reading modalities (e.g. unaided vs aided).

    busgen reader-study --config=configs/reader_study.py:default --workdir=DIR \
        --config.reads=READS.csv --config.truth=TRUTH.csv

READS.csv: `case_id, reader_id, birads[, modality]`; TRUTH.csv: `case_id, truth` (1 = malignant).
"""

import ml_collections

from busgen_jax import job


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    job.check_preset(preset, ("default",))
    config = ml_collections.ConfigDict()
    config.reads = ""
    config.truth = ""
    config.threshold = "4A"  # a read is positive at BI-RADS >= this category
    config.cov_method = "jackknife"  # OR covariance: jackknife or delong
    config.alpha = 0.05
    config.binomial_method = "clopper-pearson"
    return config
