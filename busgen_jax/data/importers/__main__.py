"""Command line: `python -m busgen_jax.data.importers --layout=busi --source=... --out=...`."""

from __future__ import annotations

import argparse
import json
import os
import sys

from busgen_jax.data.importers import READERS, import_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layout", required=True, choices=sorted(READERS))
    parser.add_argument("--source", required=True, help="dataset folder, or CSV for 'table'")
    parser.add_argument("--out", required=True, help="new output directory")
    parser.add_argument("--seed", type=int, default=0, help="split seed")
    parser.add_argument(
        "--salt",
        default=os.environ.get("BUSGEN_SALT"),
        help="secret pseudonymisation salt (default: $BUSGEN_SALT)",
    )
    parser.add_argument("--split_fractions", default="0.7,0.15,0.15", help="train,val,test")
    parser.add_argument("--device", default=None, help="device name overriding the source's")
    args = parser.parse_args(argv)
    try:
        manifest = import_dataset(
            args.layout,
            args.source,
            args.out,
            salt=args.salt or "",
            seed=args.seed,
            split_fractions=[float(f) for f in args.split_fractions.split(",")],
            device=args.device,
        )
    except ValueError as e:  # DatasetImportError, SchemaError, a bad --split_fractions
        print(f"error: {e}", file=sys.stderr)
        return 1
    summary = {k: manifest[k] for k in ("name", "num_records", "pathology", "device")}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
