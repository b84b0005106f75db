"""The downstream image classifier: a pre-activation ResNet, or the diffusion U-Net's encoder.

`Classifier(config)` maps grayscale images [B, H, W, 1] in [-1, 1] to logits [B, num_outputs];
`features(images)` gives the pooled penultimate features [B, D] (the domain feature space of the
Fréchet distance / KID and of the device-shortcut probe).

Encoders (`config.encoder`):
  "resnet"  a stem conv, then per level `num_res_blocks` pre-activation residual blocks
            (GroupNorm-ReLU-conv twice, He et al. 2016 "Identity mappings"), the first of every
            level after the first with stride 2;
  "unet"    the head conv and down path of the conditional U-Net (`config.unet` is its model
            config), run at t=0 with the null class and device and an empty box mask, so the
            weights of a pretrained generator carry over as they are (`copy_unet_weights`).
Both end in GroupNorm-ReLU, global average pooling (the features), dropout and a dense layer.

Config fields: encoder, image_size, base_channels, channel_mults, num_res_blocks, norm_groups,
stem_stride (resnet); unet (U-Net model config, unet encoder); dropout, num_outputs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from busgen_jax.models import unet as unet_lib
from busgen_jax.models.attention import group_norm

ENCODERS = ("resnet", "unet")
# The U-Net parts the encoder keeps, under the U-Net's own attribute names, so that params
# paths match one to one (`copy_unet_weights`).
UNET_PARTS = (
    "time_table",
    "time_dense1",
    "time_dense2",
    "class_embed",
    "device_embed",
    "cond_dense1",
    "cond_dense2",
    "head",
    "down",
)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError with one line naming the first invalid classifier model field."""
    checks = [
        ("encoder", config.encoder in ENCODERS, f"one of {ENCODERS}"),
        ("dropout", 0.0 <= config.dropout < 1.0, "in [0, 1)"),
        ("num_outputs", config.num_outputs >= 1, ">= 1"),
    ]
    if config.encoder == "resnet":
        checks += [
            ("channel_mults", len(config.channel_mults) >= 1, "non-empty"),
            ("stem_stride", config.stem_stride in (1, 2), "1 or 2"),
        ]
        checks += [(n, config[n] >= 1, ">= 1") for n in ("base_channels", "num_res_blocks")]
        widths = [config.base_channels * m for m in config.channel_mults]
        ok = config.norm_groups >= 1 and all(w % config.norm_groups == 0 for w in widths)
        checks.append(("norm_groups", ok, f"a divisor of every level width {widths}"))
    else:
        checks.append(("unet", config.unet is not None, "the U-Net model config"))
    for name, ok, expected in checks:
        if not ok:
            raise ValueError(
                f"classifier model field '{name}' must be {expected}, got {config.get(name)!r}"
            )
    if config.encoder == "unet":
        unet_lib.validate_config(config.unet)


class PreActBlock(nnx.Module):
    """x + conv(relu(gn(conv(relu(gn(x)))))), the shortcut a strided 1x1 conv on change."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int, *, rngs: nnx.Rngs):
        self.norm1 = group_norm(in_ch, groups, rngs=rngs)
        self.conv1 = nnx.Conv(in_ch, out_ch, (3, 3), strides=stride, rngs=rngs)
        self.norm2 = group_norm(out_ch, groups, rngs=rngs)
        self.conv2 = nnx.Conv(out_ch, out_ch, (3, 3), rngs=rngs)
        changes = stride != 1 or in_ch != out_ch
        self.shortcut = (
            nnx.Conv(in_ch, out_ch, (1, 1), strides=stride, rngs=rngs) if changes else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        h = nnx.relu(self.norm1(x))
        # Pre-activation: a projection shortcut sees the normalized input, identity sees x.
        shortcut = x if self.shortcut is None else self.shortcut(h)
        h = self.conv2(nnx.relu(self.norm2(self.conv1(h))))
        return h + shortcut


class ResNetEncoder(nnx.Module):
    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        ch, groups = config.base_channels, config.norm_groups
        self.stem = nnx.Conv(1, ch, (3, 3), strides=config.stem_stride, rngs=rngs)
        blocks, now = [], ch
        for level, mult in enumerate(config.channel_mults):
            for index in range(config.num_res_blocks):
                stride = 2 if level > 0 and index == 0 else 1
                blocks.append(PreActBlock(now, ch * mult, stride, groups, rngs=rngs))
                now = ch * mult
        self.blocks = nnx.List(blocks)
        self.out_channels, self.norm_groups = now, groups

    def __call__(self, images: jax.Array, dropout_rng: jax.Array | None = None) -> jax.Array:
        del dropout_rng  # the residual blocks have no dropout
        h = self.stem(images)
        for block in self.blocks:
            h = block(h)
        return h


class UNetEncoder(nnx.Module):
    """The U-Net's embeddings, head conv and down path (see the module docstring)."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        # Built through the U-Net itself so the layout cannot drift from it; the middle and up
        # paths are dropped with the temporary model.
        full = unet_lib.UNet(config, rngs=rngs)
        for name in UNET_PARTS:
            if hasattr(full, name):
                setattr(self, name, getattr(full, name))
        self.time_embedding, self.image_channels = config.time_embedding, config.image_channels
        levels = config.channel_mults
        self.out_channels = config.base_channels * levels[-1]
        self.norm_groups = config.norm_groups

    def embeddings(self) -> tuple[jax.Array, jax.Array]:
        """Time embedding at t=0 and the null condition embedding, [1, 4 * base_channels]."""
        t = jnp.zeros((1,), jnp.float32)
        if self.time_embedding == "table":
            temb = unet_lib.interpolate_rows(self.time_table[...], t)
        else:
            temb = unet_lib.sinusoidal_embedding(t, self.time_dense1.in_features)
        temb = self.time_dense2(nnx.swish(self.time_dense1(temb)))
        null = jnp.zeros((1,), jnp.int32)
        cemb = jnp.concatenate([self.class_embed(null), self.device_embed(null)], -1)
        return temb, self.cond_dense2(nnx.swish(self.cond_dense1(cemb)))

    def __call__(self, images: jax.Array, dropout_rng: jax.Array | None = None) -> jax.Array:
        batch = images.shape[0]
        temb, cemb = (jnp.broadcast_to(e, (batch, e.shape[-1])) for e in self.embeddings())
        # Grayscale repeated to the model's channels, as the generator sees it; no box.
        x = jnp.repeat(images, self.image_channels, axis=-1)
        h = self.head(jnp.concatenate([x, jnp.zeros_like(images)], axis=-1))
        for index, block in enumerate(self.down):
            if isinstance(block, unet_lib.ResBlock):
                rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, index)
                h = block(h, temb, cemb, rng)
            else:
                h = block(h)
        return h


class Classifier(nnx.Module):
    """Encoder, GroupNorm-ReLU, global average pool (features), dropout, dense logits."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        validate_config(config)
        if config.encoder == "resnet":
            self.encoder = ResNetEncoder(config, rngs=rngs)
        else:
            self.encoder = UNetEncoder(config.unet, rngs=rngs)
        width = self.encoder.out_channels
        self.norm = group_norm(width, self.encoder.norm_groups, rngs=rngs)
        self.fc = nnx.Linear(width, config.num_outputs, rngs=rngs)
        self.rate = float(config.dropout)

    def features(self, images: jax.Array, *, dropout_rng: jax.Array | None = None) -> jax.Array:
        """Pooled penultimate features [B, D] of images [B, H, W, 1] in [-1, 1]."""
        h = self.encoder(images, dropout_rng)
        return nnx.relu(self.norm(h)).mean(axis=(1, 2))

    def __call__(
        self,
        images: jax.Array,
        *,
        dropout_rng: jax.Array | None = None,
        return_features: bool = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Logits [B, num_outputs] (and the features [B, D] if `return_features`).

        `dropout_rng` None evaluates; a key trains (dropout in the head and U-Net blocks).
        """
        encoder_rng, head_rng = (
            (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
        )
        features = self.features(images, dropout_rng=encoder_rng)
        logits = self.fc(unet_lib.dropout(features, self.rate, head_rng))
        return (logits, features) if return_features else logits


def copy_unet_weights(model: Classifier, unet: unet_lib.UNet) -> Classifier:
    """Copies a U-Net's params into a classifier with a "unet" encoder (in place; returned).

    Raises:
      ValueError naming the first encoder parameter the U-Net lacks or has in another shape.
    """
    if not isinstance(model.encoder, UNetEncoder):
        raise ValueError("copy_unet_weights needs a classifier with encoder 'unet'")
    source = nnx.to_pure_dict(nnx.state(unet, nnx.Param))
    target = nnx.state(model.encoder, nnx.Param)

    def lookup(path, leaf):
        keys = tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)
        try:
            value = functools.reduce(lambda tree, key: tree[key], keys, source)
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"the U-Net has no parameter {'/'.join(map(str, keys))}") from None
        if value.shape != leaf.shape:
            raise ValueError(
                f"U-Net parameter {'/'.join(map(str, keys))} has shape "
                f"{value.shape}, the encoder needs {leaf.shape}"
            )
        return jnp.asarray(value)

    copied = jax.tree_util.tree_map_with_path(lookup, nnx.to_pure_dict(target))
    nnx.replace_by_pure_dict(target, copied)
    nnx.update(model.encoder, target)
    return model
