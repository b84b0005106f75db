"""Ships a pretrained generator as the package's phantom foundation model (`make foundation`).

    python -m busgen_jax.jobs.ship_foundation --export=workdir/foundation/pretrain/export \
        --card_facts=facts.json --grid=grid.png --sampling_preset=phantom_foundation

Copies the export into `busgen_jax/assets/phantom_foundation/` with its model card and
checksums (`busgen_jax.diffusion.foundation`).
"""

from __future__ import annotations

import argparse
import json
import pathlib
from collections.abc import Sequence

from busgen_jax.diffusion import foundation


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", required=True, help="pretraining's export/ directory")
    parser.add_argument("--card_facts", default="", help="JSON of training facts and quality")
    parser.add_argument("--destination", default=str(foundation.SHIPPED))
    parser.add_argument(
        "--grid", default="", help="sample grid PNG to foundation.ship beside the card"
    )
    parser.add_argument("--sampling_preset", default="", help="sampling the spec names")
    parser.add_argument("--pretrain_workdir", default="", help="for the card: steps trained")
    parser.add_argument("--train_seconds", type=float, default=0.0, help="for the card")
    args = parser.parse_args(argv)
    facts = json.loads(pathlib.Path(args.card_facts).read_text()) if args.card_facts else {}
    facts.setdefault("training", {}).update(
        foundation.training_facts(args.pretrain_workdir, args.train_seconds)
    )
    extra = [args.grid] if args.grid else []
    if args.grid:
        facts["grid"] = pathlib.Path(args.grid).name
    out = foundation.ship(args.export, facts, args.destination, extra, args.sampling_preset)
    print(f"shipped foundation model: {out}")


if __name__ == "__main__":
    main()
