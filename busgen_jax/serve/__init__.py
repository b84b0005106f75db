"""Serves a local page to draw a lesion box, pick pathology and device, and sample.

    busgen serve --config=configs/serve.py:default --workdir=DIR

Prints the page's address (http://127.0.0.1:8765/ by default) and serves until interrupted;
every generated image and its provenance sidecar are also written to DIR/images/. The page and
its API are in `server`, the sampling behind them in `studio`, the queue in `jobs`.
"""

from __future__ import annotations

import pathlib

import ml_collections
from absl import logging

from busgen_jax.core import errors
from busgen_jax.data import box_priors, builtin, phantom, shards
from busgen_jax.diffusion import foundation
from busgen_jax.jobs import shell
from busgen_jax.serve import server, studio

IMAGES = "images"
STOP_TIMEOUT_S = 10.0


def load_box_prior(config: ml_collections.ConfigDict) -> box_priors.BoxPrior:
    if config.box_prior:
        return box_priors.load_box_prior(config.box_prior)
    if config.box_prior_from:
        records = [r for path in config.box_prior_from for r in shards.read_records(path, "train")]
    else:
        # A sample of the preset's images (all devices, every split): its class mix and labels.
        preset = builtin.phantom_config(config.phantom_prior)
        records = list(
            phantom.phantom_records(
                config.phantom_prior_images,
                preset.seed,
                preset.image_size,
                class_probs=preset.class_probs,
                label_map=preset.label_map,
            )
        )
    try:
        return box_priors.fit_box_prior(records, bandwidth=config.box_bandwidth)
    except ValueError as e:
        raise errors.JobError(f"box prior: {e}") from e


def build_app(config: ml_collections.ConfigDict, workdir: str) -> server.App:
    """Loads the generator and box prior and starts the worker (it compiles the default first)."""
    if not config.generator:
        raise errors.JobError(
            "no generator to serve: pass --config.generator=EXPORT_DIR (pretrain's export/)"
        )
    if pathlib.Path(config.generator) == foundation.SHIPPED:
        foundation.shipped_dir()  # a missing shipped model says how to get it back
    try:
        studio_ = studio.Studio(
            config.generator,
            config.adapter or None,
            load_box_prior(config),
            sampling=config.sampling.to_dict(),
            seed=config.seed,
            num_images=config.num_images,
            limits=studio.Limits(**config.limits.to_dict()),
        )
    except ValueError as e:  # bad defaults, an adapter of another generator
        raise errors.JobError(f"{e}") from e
    save_dir = pathlib.Path(workdir) / IMAGES if config.save_images else None
    return server.App(
        studio_, max_queued=config.max_queued, keep=config.keep_jobs, save_dir=save_dir
    )


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    warning = server.bind_warning(config.host)
    if warning:
        logging.warning("%s", warning)
    app = build_app(config, workdir)
    try:
        httpd = server.make_server(app, config.host, config.port)
    except OSError as e:
        app.close()
        raise errors.JobError(f"cannot serve on {config.host}:{config.port}: {e.strerror}") from e
    print(f"busgen serve: open {server.url(httpd)} (Ctrl-C stops)", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        # Ctrl-C should not wait out a long compile; an unfinished image is simply not saved.
        app.close(timeout=STOP_TIMEOUT_S)


main = shell.command(run, "configs/serve.py:default", __doc__)
