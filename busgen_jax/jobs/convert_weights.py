"""Converts published BUSGen PyTorch weights into an exported generator.

    python -m busgen_jax.jobs.convert_weights --checkpoint ckpt.pt --preset busgen_toy --out DIR

The conversion itself is `busgen_jax.models.torch_convert`; a bad checkpoint, key or preset is
one `error:` line.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from busgen_jax.jobs import shell
from busgen_jax.models import params_io, presets, torch_convert


def main(argv: list[str] | None = None) -> None:
    """The conversion command; a bad checkpoint, key or preset is one `error:` line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="published or training .pt file")
    parser.add_argument("--preset", required=True, help="'busgen_toy' or 'busgen'")
    parser.add_argument("--out", required=True, help="params directory to write")
    parser.add_argument("--key", default=None, help="entry holding the state_dict, if several")
    args = parser.parse_args(argv)
    try:
        if args.preset not in torch_convert.PUBLISHED_PRESETS:
            raise ValueError(
                f"--preset is {args.preset!r}, not one of {torch_convert.PUBLISHED_PRESETS}"
            )
        config = presets.model_config(args.preset)
        tensors = torch_convert.load_torch_checkpoint(args.checkpoint, args.key)
        try:
            state = torch_convert.convert_state_dict(tensors, config)
        except ValueError as error:
            raise ValueError(f"{args.checkpoint} as preset {args.preset}: {error}") from error
    except (ValueError, OSError, ImportError) as error:
        shell._fail(error)
    params_io.save_params(state, args.out, config=config)
    torch_convert.write_published_spec(config, args.out)
    count = sum(np.size(x) for x in jax.tree.leaves(state))
    print(f"wrote a generator of {count:,} parameters (preset {args.preset}) to {args.out}")


if __name__ == "__main__":
    main()
