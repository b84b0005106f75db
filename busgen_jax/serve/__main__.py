"""`python -m busgen_jax.serve`: the same as `busgen serve`."""

from busgen_jax.jobs import shell
from busgen_jax.serve import main

shell.run_main(main)
