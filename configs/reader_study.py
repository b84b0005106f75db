"""Analysis of a reader study on its own (no model): readers' operating points and ROC, and the
Obuchowski-Rockette MRMC comparison of two or more reading modalities (e.g. unaided vs aided):
overall F test with Hillis df, pairwise contrasts, per-reader tests, variance components.

    busgen reader-study --config=configs/reader_study.py:default --workdir=DIR \
        --config.reads=READS.csv --config.truth=TRUTH.csv

READS: a long table `case_id, reader_id, birads|rating[, modality][, truth]`, an iMRMC file
(`--config.format=imrmc`) or an RJafroc ROC workbook (.xlsx, or its TRUTH/FP/TP sheets as CSV in a folder)
(`--config.format=rjafroc`); TRUTH.csv (`case_id, truth`, 1 = malignant) is needed only when
the reads carry no truth. Numeric ratings: `--config.rating_scale=numeric
--config.threshold=50` (and `--config.higher_is_malignant=False` for reversed scales).
"""

import ml_collections

from busgen_jax.core import config_files


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    config_files.check_preset(preset, ("default",))
    config = ml_collections.ConfigDict()
    config.reads = ""
    config.truth = ""
    config.format = "long"  # long | imrmc | rjafroc
    config.rating_scale = "birads"  # birads | numeric
    config.higher_is_malignant = True
    # A read at or beyond this is a positive call: a BI-RADS category, or a number in the file's
    # units ("" on a numeric scale: no sensitivity / specificity analyses).
    config.threshold = "4A"
    # Figures of merit of the MRMC analyses: auc, sensitivity, specificity, pauc.
    config.foms = ("auc", "sensitivity", "specificity")
    config.max_fpr = 0.2  # pAUC over FPR in [0, max_fpr]
    config.cov_method = "jackknife"  # OR covariance: jackknife or delong (AUC only)
    config.fixed_reader_test = "chi2"  # chi2 (OR) or f (F on (t - 1)(c - 1) df, as DBM)
    config.alpha = 0.05
    config.binomial_method = "clopper-pearson"
    return config
