"""Clinical evaluation configs: presets `default` (a reader-study CSV or none) and `phantom`
(a reader study simulated from the phantom's latent malignancy score).

    busgen evaluate --config=configs/evaluate.py:default --workdir=DIR \
        --config.predictions="('real-only=A/predictions/test.csv', 'mixed=B/predictions/test.csv')" \
        --config.validation="('real-only=A/predictions/val.csv', 'mixed=B/predictions/val.csv')" \
        --config.reader_study.csv=READS.csv
    busgen evaluate --config=configs/evaluate.py:phantom --workdir=DIR \
        --config.predictions="('real-only=A/predictions/test.csv',)" \
        --config.reader_study.data_paths="('DATA/phantom',)"
"""

import ml_collections

from busgen_jax import job

PRESETS = ("default", "phantom")


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    job.check_preset(preset, PRESETS)
    config = ml_collections.ConfigDict()
    # 'name=path' of each model's test predictions (`busgen predict` CSVs), in report order.
    config.predictions = ()
    # 'name=path' of validation predictions; a model's threshold is chosen on them when given.
    config.validation = ()
    # Operating point: target_specificity | target_sensitivity (at `target`), youden, or fixed
    # (the threshold is `target`).
    config.threshold = ml_collections.ConfigDict({"rule": "target_specificity", "target": 0.9})
    config.bootstrap = ml_collections.ConfigDict({"n_boot": 1000, "seed": 0})
    config.alpha = 0.05
    config.binomial_method = "clopper-pearson"
    config.cov_method = "jackknife"  # OR MRMC covariance: jackknife or delong
    config.reader_study = ml_collections.ConfigDict(
        {
            "csv": "",  # `case_id, reader_id, birads[, modality]`
            "simulate": False,
            # A simulated study reads the latent scores of these datasets' `split` records.
            "data_paths": (),
            "split": "test",
            "n_readers": 8,
            "modalities": (),  # e.g. ("unaided", "aided"); empty: one modality
            "seed": 0,
            "threshold": "4A",  # a read is positive at BI-RADS >= this category
            "modality": "",  # the modality models are compared with (default: the first)
        }
    )
    if preset == "phantom":
        config.reader_study.simulate = True
    return config
