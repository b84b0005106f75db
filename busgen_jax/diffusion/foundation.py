"""The phantom foundation model shipped with the package, and the command that ships it.

BUSGen users start from released weights; here the released weights are a phantom foundation
generator in `busgen_jax/assets/phantom_foundation/` (an exported generator, see
`busgen_jax.diffusion.generator`), with `MODEL_CARD.md` and `SHA256SUMS`. Every job that needs a generator
uses it when its config names none, and `generator.load_generator` checks the checksums of any
generator directory that carries a `SHA256SUMS`, so a damaged or edited copy fails with a line
naming the file instead of sampling garbage.

`make foundation` reproduces it from scratch:

    busgen phantom --config=configs/phantom.py:foundation --workdir=workdir/foundation/phantom
    busgen pretrain --config=configs/pretrain.py:phantom_foundation \
        --workdir=workdir/foundation/pretrain \
        --config.data.paths="('workdir/foundation/phantom/data/phantom_foundation',)"
    python -m busgen_jax.jobs.ship_foundation --export=workdir/foundation/pretrain/export \
        --card_facts=workdir/foundation/facts.json --sampling_preset=phantom_foundation

The last command copies the export into the package, writes the checksums, and renders the
model card from the export's configs and the facts file (training wall time, machine, commit,
quality numbers).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from collections.abc import Sequence

from busgen_jax.core import errors
from busgen_jax.data import shards

ASSETS = pathlib.Path(__file__).parents[1] / "assets"
SHIPPED = ASSETS / "phantom_foundation"
CHECKSUMS = "SHA256SUMS"
CARD = "MODEL_CARD.md"


class ChecksumError(errors.JobError):
    """A generator file differs from its recorded SHA-256 (one `error:` line in every job)."""


def shipped_dir() -> pathlib.Path:
    """The shipped phantom foundation generator (an exported generator directory)."""
    if not (SHIPPED / CHECKSUMS).is_file():
        raise FileNotFoundError(
            f"{SHIPPED}: the shipped foundation model is missing (reinstall the package, or run "
            "`make foundation` to rebuild it)"
        )
    return SHIPPED


def _covered_files(directory: pathlib.Path) -> list[pathlib.Path]:
    """Every file that makes up the generator: all but the checksum file and the card."""
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and p.name not in (CHECKSUMS, CARD) and "__pycache__" not in p.parts
    )


def write_checksums(directory: pathlib.Path) -> pathlib.Path:
    """Writes `sha256  relative/path` lines (the `sha256sum -c` format) for the generator."""
    lines = [
        f"{shards.file_sha256(p)}  {p.relative_to(directory)}" for p in _covered_files(directory)
    ]
    out = directory / CHECKSUMS
    out.write_text("\n".join(lines) + "\n")
    return out


def verify_checksums(directory: str | pathlib.Path) -> None:
    """Raises ChecksumError naming the first file that is missing, extra or changed."""
    directory = pathlib.Path(directory)
    recorded = {}
    for line in (directory / CHECKSUMS).read_text().splitlines():
        digest, _, name = line.partition("  ")
        recorded[name] = digest
    present = {str(p.relative_to(directory)): p for p in _covered_files(directory)}
    for name in sorted(set(recorded) | set(present)):
        where = directory / name
        if name not in present:
            raise ChecksumError(f"{where}: missing (listed in {CHECKSUMS})")
        if name not in recorded:
            raise ChecksumError(f"{where}: not listed in {directory / CHECKSUMS}")
        if shards.file_sha256(present[name]) != recorded[name]:
            raise ChecksumError(
                f"{where}: SHA-256 differs from {directory / CHECKSUMS}; the generator files "
                "are damaged or were edited (reinstall, or rebuild with `make foundation`)"
            )


def render_card(export: pathlib.Path, facts: dict) -> str:
    """The model card: what the model is, how it was made, and what it measured."""
    spec = json.loads((export / "generator.json").read_text())
    model = json.loads((export / "model_config.json").read_text())
    lines = [
        "# Phantom foundation model",
        "",
        "A conditional diffusion U-Net pretrained on the built-in breast-ultrasound phantom, the",
        "stand-in for BUSGen's released weights. **Not trained on patients; not a medical device.**",
        "",
        "## What it knows",
        f"- classes: {', '.join(spec['class_names'])} (DCIS is not among them: its images carry",
        "  the coarse label malignant in the corpus, so benign vs DCIS is a few-shot task)",
        f"- devices: {', '.join(spec['device_names'])}",
        f"- image size {spec['image_size']} px, grayscale; prediction target "
        f"'{spec['prediction']}'; schedule {json.dumps(spec['schedule'], sort_keys=True)}",
        f"- default sampling: {json.dumps(spec.get('sampling', {}), sort_keys=True)}",
        f"- U-Net: {json.dumps(model, sort_keys=True)}",
        "",
        "## How it was made",
    ]
    lines += [f"- {key}: {value}" for key, value in facts.get("training", {}).items()]
    lines += ["", "## What it measured", ""]
    quality = facts.get("quality", {})
    lines += [f"- {key}: {value}" for key, value in quality.items()] or ["- (not measured)"]
    if facts.get("grid"):
        lines += ["", f"![samples]({facts['grid']})"]
    lines += [
        "",
        f"Files are checked against `{CHECKSUMS}` whenever the generator is loaded.",
        "",
    ]
    return "\n".join(lines)


def ship(
    export: str | pathlib.Path,
    facts: dict,
    destination: str | pathlib.Path = SHIPPED,
    extra_files: Sequence[str | pathlib.Path] = (),
    sampling_preset: str = "",
) -> pathlib.Path:
    """Copies an exported generator to `destination` with its model card and checksums.

    `sampling_preset` (a name in `models.presets.SAMPLING_PRESETS`), if given, replaces the
    sampling the spec names: how the shipped model is sampled is decided by measuring it.
    """
    export, destination = pathlib.Path(export), pathlib.Path(destination)
    if not (export / "generator.json").is_file():
        raise FileNotFoundError(f"{export}: not an exported generator (no generator.json)")
    staging = destination.with_name(f".{destination.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(export, staging)
    if sampling_preset:
        from busgen_jax.models import presets

        spec_path = staging / "generator.json"
        spec = json.loads(spec_path.read_text())
        spec["sampling"] = presets.sampling_preset(sampling_preset)
        spec_path.write_text(json.dumps(spec, indent=2, sort_keys=True))
    for extra in extra_files:
        shutil.copy2(extra, staging / pathlib.Path(extra).name)
    (staging / CARD).write_text(render_card(staging, facts))
    write_checksums(staging)
    shutil.rmtree(destination, ignore_errors=True)
    staging.rename(destination)
    return destination


def training_facts(pretrain_workdir: str, train_seconds: float) -> dict:
    """Steps trained (newest checkpoint), wall time, machine and commit, for the model card."""
    import platform
    import subprocess

    facts = {
        "reproduce with": "make foundation (see busgen_jax/diffusion/foundation.py)",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
    }
    if pretrain_workdir:
        steps = [
            int(p.name)
            for p in (pathlib.Path(pretrain_workdir) / "checkpoints").iterdir()
            if p.name.isdigit()
        ]
        facts["steps trained"] = max(steps, default=0)
    if train_seconds:
        facts["training wall time"] = f"{train_seconds / 60:.0f} min"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ASSETS.parent
    ).stdout.strip()
    facts["commit"] = commit or "unknown"
    return facts
