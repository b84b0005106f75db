"""Scores the trained phantom oracle on its test split once and ships it (`make oracle`).

    python -m busgen_jax.jobs.ship_oracle --workdir=workdir/oracle --train_seconds=S

Copies the classifier into `busgen_jax/assets/phantom_oracle/` with its card and checksums
(`busgen_jax.evaluation.oracle`).
"""

from __future__ import annotations

import argparse
import json
import pathlib
from collections.abc import Sequence

from busgen_jax.core import config_files
from busgen_jax.data import builtin
from busgen_jax.diffusion import foundation
from busgen_jax.evaluation import oracle
from busgen_jax.jobs import layout


def main(argv: Sequence[str] | None = None) -> None:
    """`make oracle`'s last step: score the trained oracle on its test split once, and oracle.ship."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--workdir", required=True, help="the oracle's classifier workdir")
    parser.add_argument("--train_seconds", type=float, default=0.0)
    parser.add_argument("--destination", default=str(oracle.SHIPPED))
    args = parser.parse_args(argv)
    config = config_files.load("configs/classifier.py:oracle")
    data = [builtin.resolve_path(p) for p in config.data.paths]
    val = json.loads((pathlib.Path(args.workdir) / layout.eval_file("val")).read_text())
    test = oracle.record_test_auc(pathlib.Path(args.workdir) / layout.EXPORT, data)
    facts = foundation.training_facts("", args.train_seconds)
    facts["reproduce with"] = "make oracle (see busgen_jax/evaluation/oracle.py)"
    facts.update(
        {
            "config": "configs/classifier.py:oracle (ResNet 16-32-64, 32 px, 1,200 steps, batch 32)",
            "data": f"built-in phantom `benign_dcis`: {', '.join(config.data.paths)}",
            "val AUC (DeLong 95% CI)": f"{val['auc']:.3f} ({val['ci_low']:.3f}-{val['ci_high']:.3f})",
            "test AUC (DeLong 95% CI)": f"{test['auc']:.3f} ({test['ci_low']:.3f}-"
            f"{test['ci_high']:.3f}), {test['n']} cases, {test['n_positive']} DCIS",
        }
    )
    print(f"shipped phantom oracle: {oracle.ship(args.workdir, facts, args.destination)}")


if __name__ == "__main__":
    main()
