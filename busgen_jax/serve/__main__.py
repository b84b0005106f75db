"""`python -m busgen_jax.serve`: the same as `busgen serve`."""

from busgen_jax import job
from busgen_jax.serve import main

job.run_main(main)
