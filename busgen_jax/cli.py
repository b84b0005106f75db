"""`busgen`: one command with a subcommand per job.

busgen <job> --config=configs/<job>.py:<preset> --workdir=DIR [--config.<field>=<value> ...]
busgen <job> --help
"""

from __future__ import annotations

import importlib
import sys

# Subcommand -> (module, one-line summary). Modules are imported only when their job runs, so
# `busgen --help` stays fast and no job's dependencies load for another.
JOBS = {
    "phantom": ("busgen_jax.jobs.phantom", "generate a phantom breast-ultrasound dataset"),
    "import": ("busgen_jax.jobs.import_data", "import BUSI / BUS-BRA / UDIAT / CSV / DICOM data"),
    "pretrain": ("busgen_jax.jobs.pretrain", "pretrain the conditional diffusion U-Net"),
    "adapt": ("busgen_jax.jobs.adapt", "few-shot LoRA adaptation of a pretrained model"),
    "distill": ("busgen_jax.jobs.distill", "distil a generator into a few-step student"),
    "synthesize": ("busgen_jax.jobs.synthesize", "write an audited synthetic dataset"),
    "train-classifier": ("busgen_jax.jobs.train_classifier", "train the downstream classifier"),
    "predict": ("busgen_jax.jobs.predict", "per-case probabilities of a classifier, as CSV"),
    "scaling": ("busgen_jax.jobs.scaling", "data-scaling experiment: real vs synthetic vs mixed"),
    "evaluate": ("busgen_jax.jobs.evaluate", "classifiers' clinical statistics, reader study"),
    "reader-study": ("busgen_jax.jobs.reader_study", "analyse a reader study (MRMC of modalities)"),
    "audit": ("busgen_jax.jobs.audit", "audit synthetic data for near-copies of training images"),
    "report": ("busgen_jax.jobs.report", "rebuild the HTML report of a demo workdir"),
    "demo": ("busgen_jax.jobs.demo", "the whole pipeline on the built-in phantom"),
    "serve": ("busgen_jax.serve", "a local web page to draw a lesion box and sample"),
}


def _usage() -> str:
    width = max(map(len, JOBS))
    lines = [__doc__.strip(), "", "Jobs:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in JOBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    name, rest = argv[0], argv[1:]
    if name not in JOBS:
        print(f"error: unknown job '{name}' (choose one of: {', '.join(JOBS)})", file=sys.stderr)
        sys.exit(2)
    module_name = JOBS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        print(f"error: job '{name}' is not available in this version", file=sys.stderr)
        sys.exit(2)
    module.main([f"busgen {name}", *rest])


if __name__ == "__main__":
    main()
