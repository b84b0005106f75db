"""Clinical evaluation configs: presets `default` (a reader-study file or none) and `phantom`
(a 9-reader Roe-Metz panel simulated with the phantom's latent malignancy score as difficulty).

    busgen evaluate --config=configs/evaluate.py:default --workdir=DIR \
        --config.predictions="('real-only=A/predictions/test.csv', 'mixed=B/predictions/test.csv')" \
        --config.validation="('real-only=A/predictions/val.csv', 'mixed=B/predictions/val.csv')" \
        --config.reader_study.csv=READS.csv
    busgen evaluate --config=configs/evaluate.py:phantom --workdir=DIR \
        --config.predictions="('real-only=A/predictions/test.csv',)" \
        --config.reader_study.data_paths="('DATA/phantom',)"
"""

import ml_collections

from busgen_jax.core import config_files

PRESETS = ("default", "phantom")


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    config_files.check_preset(preset, PRESETS)
    config = ml_collections.ConfigDict()
    # 'name=path' of each model's test predictions (`busgen predict` CSVs), in report order.
    config.predictions = ()
    # 'name=path' of validation predictions; a model's threshold is chosen on them when given.
    config.validation = ()
    # Operating point: target_specificity | target_sensitivity (at `target`), youden, or fixed
    # (the threshold is `target`).
    config.threshold = ml_collections.ConfigDict({"rule": "target_specificity", "target": 0.9})
    # AUC bootstrap interval: percentile, basic or bca (scipy.stats.bootstrap, stratified).
    config.bootstrap = ml_collections.ConfigDict(
        {"n_boot": 1000, "seed": 0, "method": "percentile"}
    )
    config.alpha = 0.05
    config.binomial_method = "clopper-pearson"
    config.cov_method = "jackknife"  # OR MRMC covariance: jackknife or delong
    config.reader_study = ml_collections.ConfigDict(
        {
            # Reads: a long table (`case_id, reader_id[, modality], birads|rating[, truth]`),
            # an iMRMC file, or an RJafroc ROC workbook (.xlsx, or a folder of its CSV sheets).
            "csv": "",
            "format": "long",  # long | imrmc | rjafroc
            "rating_scale": "birads",  # birads | numeric (any ordinal or continuous scale)
            "higher_is_malignant": True,  # False when a low rating is the suspicious end
            # A read at or beyond this is a positive call: a BI-RADS category, or a number in
            # the file's units on a numeric scale ("" there: AUC analyses only).
            "threshold": "4A",
            "mcnemar": "exact",  # exact | asymptotic | corrected
            "simulate": False,
            # A simulated (Roe-Metz) panel takes each case's difficulty from the latent
            # malignancy scores of these datasets' `split` records.
            "data_paths": (),
            "split": "test",
            "n_readers": 9,  # as BUSGen's reader study
            "modalities": (),  # e.g. ("unaided", "aided"); empty: one modality
            "modality_gain": 0.3,  # simulated separation added per later modality
            "seed": 0,
            "modality": "",  # the modality models are compared with (default: the first)
        }
    )
    if preset == "phantom":
        config.reader_study.simulate = True
    return config
