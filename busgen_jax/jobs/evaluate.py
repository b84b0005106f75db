"""Clinical evaluation of classifiers on the same test cases, with a reader study.

    busgen evaluate --config=configs/evaluate.py:default --workdir=DIR \
        --config.predictions="('real-only=RUN_A/predictions/test.csv', 'mixed=RUN_B/...')" \
        --config.validation="('real-only=RUN_A/predictions/val.csv', ...)" \
        --config.reader_study.csv=READS.csv

Inputs are the per-case CSVs of `busgen predict` (`case_id`, `label`, `probability`, ...), one
per named model; the ground truth is the `label` column (1 = the task's positive class), which
all files must agree on. Per model: ROC AUC with a DeLong and a bootstrap interval, and
sensitivity, specificity, PPV, NPV and accuracy at a threshold chosen on the model's validation
predictions (or, flagged `chosen_on: test`, on the test set itself); every pair of models: a
paired DeLong test. With a reader study (reads in a long table, iMRMC or RJafroc layout on a
BI-RADS or numeric scale, or for the phantom a Roe-Metz panel *simulated* with its latent
malignancy score as case difficulty, labelled so everywhere): each reader's operating point, each
model at each reader's specificity and sensitivity with McNemar tests, the mean sensitivity and
specificity gains with OR MRMC tests, the OR MRMC model-vs-readers AUC analysis, and with two or
more modalities the OR MRMC modality comparison.

Writes DIR/evaluation/results.json (every number: `busgen_jax.evaluation.clinical`), and from it
roc.png and evaluation.md (the tables, `busgen_jax.reporting.clinical`).
"""

from __future__ import annotations

import pathlib
from typing import Any

import ml_collections

from busgen_jax.evaluation import clinical
from busgen_jax.jobs import layout, shell
from busgen_jax.reporting import clinical as clinical_report
from busgen_jax.reporting import markdown


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Reads the predictions, evaluates them and writes results.json, roc.png, evaluation.md."""
    clinical.validate_config(config)
    inputs = clinical.load_inputs(config)
    results = clinical.evaluate(inputs, config)
    out = pathlib.Path(workdir) / layout.EVALUATION
    out.mkdir(parents=True, exist_ok=True)
    clinical.write_results(results, out / layout.EVALUATION_RESULTS)
    clinical_report.write_roc(out / layout.ROC_FIGURE, inputs, results["reader_study"])
    tables = markdown.render(clinical_report.sections(results))
    (out / layout.EVALUATION_MARKDOWN).write_text(tables)
    print(f"evaluation of {len(inputs.tests)} model(s) on {len(inputs.case_ids)} cases: {out}")
    return results


main = shell.command(run, "configs/evaluate.py:default", __doc__)

if __name__ == "__main__":
    shell.run_main(main)
