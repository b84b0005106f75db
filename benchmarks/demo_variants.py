"""The demo's quality gates for synthesis variants, side by side, on one adapted generator.

    python -m benchmarks.demo_variants --base=workdir/demo \
        --variant 'filter_real=--config.label_filter_source=real' \
        --variant 'guidance=--config.guidance_search.weights=(1.0,1.8,3.0,5.0)'

Each variant is the default demo (`configs/demo.py:default`) with its flags, run in
`--out/<name>` from the base demo's finished phantom and adaptation stages (copied, so every
variant synthesizes from the same adapter and is judged on the same real data), then the
stages from guidance on. `--existing` reports variants already run. The base demo itself is the
first row (`--base_name`). Reported per variant: the gates' measurements, the classifiers' mean test AUC over
seeds, and how the synthetic set was selected (the guidance search's validation AUCs, the
weight used, candidates the label filter redrew).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import shutil
import subprocess

from benchmarks.common import demo_command, report

# The demo stages a variant reuses from the base run: its data and its adapter.
REUSED_STAGES = ("phantom", "pretrain", "adapt")


def run_variant(base: pathlib.Path, workdir: pathlib.Path, flags: list[str]) -> None:
    if (workdir / "report.html").exists():
        return
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    for stage in ("phantom", "adapt"):
        shutil.copytree(base / stage, workdir / stage)
    timings = json.loads((base / "timings.json").read_text())
    (workdir / "timings.json").write_text(
        json.dumps({stage: timings.get(stage, 0.0) for stage in REUSED_STAGES})
    )
    for stage in REUSED_STAGES:
        (workdir / f".{stage}.done").touch()
    subprocess.run(demo_command(workdir, *flags), check=True)


def row(name: str, workdir: pathlib.Path) -> list[object]:
    if not (workdir / "synthesize" / "synthetic" / "manifest.json").exists():
        # Synthesis refused (the audit or the redraw limit): the run stopped before any gate.
        return [name, "-", "-", "-", "synthesis refused: no dataset written", *["-"] * 8]
    gates = {g["gate"]: g for g in json.loads((workdir / "gates.json").read_text())}
    seeds = json.loads((workdir / "classifiers" / "seeds.json").read_text())
    manifest = json.loads((workdir / "synthesize" / "synthetic" / "manifest.json").read_text())
    extra = manifest["extra"]

    def measured(prefix: str) -> str:
        (gate,) = [g for name, g in gates.items() if name.startswith(prefix)]
        return f"{gate['measured']:.3f}" + ("" if gate["passed"] else "*")

    devices = [g for name, g in gates.items() if "of device" in name]
    search = workdir / "guidance" / "guidance.json"
    searched = json.loads(search.read_text())["val_auc"] if search.exists() else {}
    return [
        name,
        ", ".join(f"{w}: {auc:.3f}" for w, auc in searched.items()) or "-",
        extra["provenance"]["guidance"],
        extra.get("off_label_redrawn", 0),
        measured("synthetic images of class benign"),
        measured("synthetic images of class dcis"),
        f"{sum(g['passed'] for g in devices)}/{len(devices)}",
        measured("Fréchet distance"),
        *(f"{seeds[s]['mean']:.3f}" for s in ("real", "fewshot", "synthetic", "mixed")),
        sum(g["passed"] for g in gates.values()),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True, help="a finished default demo workdir")
    parser.add_argument("--base_name", default="default", help="the base run's row name")
    parser.add_argument("--out", default="workdir/demo_variants")
    parser.add_argument(
        "--variant", action="append", default=[], help="NAME=FLAGS (demo config overrides)"
    )
    parser.add_argument("--existing", action="store_true", help="report variants already run")
    args = parser.parse_args()
    base, out = pathlib.Path(args.base), pathlib.Path(args.out)
    variants = dict(v.split("=", 1) for v in args.variant)
    if not args.existing:
        for name, flags in variants.items():
            run_variant(base, out / name, shlex.split(flags))
    rows = [row(args.base_name, base)] + [row(name, out / name) for name in variants]
    report(
        "Demo synthesis variants: quality gates on one adapted generator",
        "configs/demo.py:default; base "
        f"{base}; variants: " + "; ".join(f"{name}: {flags}" for name, flags in variants.items()),
        [
            "variant",
            "guidance search: validation AUC per weight",
            "guidance",
            "off-label redrawn",
            "benign called benign",
            "DCIS called DCIS",
            "devices met",
            "Fréchet / floor",
            "AUC real",
            "AUC few-shot",
            "AUC synthetic",
            "AUC mixed",
            "gates met (of 12)",
        ],
        rows,
        notes="* gate not met. AUCs: mean test AUC over the demo's 3 classifier seeds. "
        "Each variant reuses the base run's phantom data and adapter.",
    )


if __name__ == "__main__":
    main()
