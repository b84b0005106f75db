"""The conditional diffusion U-Net of the BUSGen family (epsilon prediction), in Flax NNX.

Layout follows the published PyTorch model block for block, so its weights import one to one
(see `torch_convert.py`): a head conv on [image, box mask]; per level `num_res_blocks` residual
blocks then a down-sampler (sum of a 3x3 and a 5x5 stride-2 conv); two middle blocks; per level
`num_res_blocks + 1` residual blocks on [h, skip] then an up-sampler (transposed 5x5 conv, 3x3
conv); GroupNorm, Swish, conv tail. Every residual block adds a projection of the time embedding
and of the condition embedding (pathology class + scanner device, index 0 = null for
classifier-free guidance, Ho & Salimans 2022).

Config fields (see `presets.py`): image_size, image_channels, base_channels, channel_mults,
num_res_blocks, attention_levels (level indices, 0 = full resolution), attention_in_up_path,
middle_attention, num_heads, attention_impl, attention_chunk, dropout, norm_groups, num_classes,
num_devices (both excluding the null index), num_timesteps, time_embedding ('table' | 'sinusoidal'),
and optionally guidance_input (default False): a guidance-distilled student takes the guidance
weight w as an input (Meng et al. 2023, sec. 4.1), embedded like the time and added to it.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from busgen_jax.models.attention import IMPLEMENTATIONS, SpatialAttention, group_norm

TIME_EMBEDDINGS = ("table", "sinusoidal")
REQUIRED_FIELDS = (
    "image_size",
    "image_channels",
    "base_channels",
    "channel_mults",
    "num_res_blocks",
    "attention_levels",
    "attention_in_up_path",
    "middle_attention",
    "num_heads",
    "attention_impl",
    "attention_chunk",
    "dropout",
    "norm_groups",
    "num_classes",
    "num_devices",
    "num_timesteps",
    "time_embedding",
)
_zeros = nnx.initializers.zeros_init()
GUIDANCE_SCALE = 100.0  # w -> the argument of its sinusoidal embedding


def sinusoidal_embedding(t: jax.Array, dim: int) -> jax.Array:
    """Interleaved sinusoids [sin(t w_0), cos(t w_0), sin(t w_1), ...], w_i = 10000^(-2i/dim).

    Vaswani et al. (2017), Sec. 3.5, in the interleaved layout of the published time table.
    Defined for fractional t.
    """
    freqs = jnp.exp(-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim * jnp.log(10000.0))
    angles = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(angles.shape[0], dim)


def interpolate_rows(table: jax.Array, t: jax.Array) -> jax.Array:
    """Rows of `table` at fractional indices t (clipped to [0, T-1]), linear between rows.

    Exact at integer t: (1 - 0) * row + 0 * next is the row itself in floating point.
    """
    t = jnp.clip(jnp.asarray(t, jnp.float32), 0.0, table.shape[0] - 1)
    lower = jnp.floor(t).astype(jnp.int32)
    upper = jnp.minimum(lower + 1, table.shape[0] - 1)
    frac = (t - lower)[:, None]
    return (1.0 - frac) * table[lower] + frac * table[upper]


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout; identity when `rng` is None (evaluation) or rate is 0."""
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class ResBlock(nnx.Module):
    """GroupNorm-Swish-conv, + time and condition projections, GroupNorm-Swish-dropout-conv,
    residual (1x1 conv when channels change), then optional self-attention."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_dim: int,
        config: ml_collections.ConfigDict,
        *,
        attn: bool,
        rngs: nnx.Rngs,
    ):
        groups = config.norm_groups
        self.norm1 = group_norm(in_ch, groups, rngs=rngs)
        self.conv1 = nnx.Conv(in_ch, out_ch, (3, 3), rngs=rngs)
        self.temb_proj = nnx.Linear(emb_dim, out_ch, rngs=rngs)
        self.cond_proj = nnx.Linear(emb_dim, out_ch, rngs=rngs)
        self.norm2 = group_norm(out_ch, groups, rngs=rngs)
        # Zero-initialized last conv: each block starts as its shortcut (Ho et al. 2020 code).
        self.conv2 = nnx.Conv(out_ch, out_ch, (3, 3), kernel_init=_zeros, rngs=rngs)
        self.shortcut = nnx.Conv(in_ch, out_ch, (1, 1), rngs=rngs) if in_ch != out_ch else None
        self.attn = (
            SpatialAttention(
                out_ch,
                num_heads=config.num_heads,
                groups=groups,
                impl=config.attention_impl,
                chunk=config.attention_chunk,
                rngs=rngs,
            )
            if attn
            else None
        )
        self.rate = float(config.dropout)

    def __call__(self, x: jax.Array, temb: jax.Array, cemb: jax.Array, dropout_rng=None):
        h = self.conv1(nnx.swish(self.norm1(x)))
        h = h + self.temb_proj(nnx.swish(temb))[:, None, None, :]
        h = h + self.cond_proj(nnx.swish(cemb))[:, None, None, :]
        h = self.conv2(dropout(nnx.swish(self.norm2(h)), self.rate, dropout_rng))
        h = h + (x if self.shortcut is None else self.shortcut(x))
        return h if self.attn is None else self.attn(h)


class Downsample(nnx.Module):
    """Halves the resolution: conv3x3(stride 2, pad 1)(x) + conv5x5(stride 2, pad 2)(x)."""

    def __init__(self, ch: int, *, rngs: nnx.Rngs):
        self.conv3 = nnx.Conv(ch, ch, (3, 3), strides=2, padding=((1, 1), (1, 1)), rngs=rngs)
        self.conv5 = nnx.Conv(ch, ch, (5, 5), strides=2, padding=((2, 2), (2, 2)), rngs=rngs)

    def __call__(self, x):
        return self.conv3(x) + self.conv5(x)


def subpixel_conv_transpose(
    x: jax.Array, kernel: jax.Array, padding: tuple[tuple[int, int], tuple[int, int]]
) -> jax.Array:
    """`lax.conv_transpose(x, kernel, strides=2, padding)` [B, H, W, C] -> [B, 2H, 2W, O] as four
    ordinary convolutions, one per output phase, interleaved (sub-pixel convolution, Shi et al.
    2016, Sec. 2.2).

    The transposed conv is a correlation over the input dilated by 2: output o = 2m + a sums
    x[i] K[k] over o + k - lo = 2i, so phase a uses only the taps k = k_a, k_a + 2, ... with
    k_a = (lo - a) mod 2, at input offsets i - m = (k - lo + a) / 2. Each phase is therefore a
    stride-1 correlation of the undilated x with K[k_a::2]. Why: XLA on CPU has no fast kernel
    for a dilated input, and the backward pass of `conv_transpose` (a kernel gradient with a
    dilated window) ran 50-70x slower than PyTorch's; these four convolutions and their
    gradients are ordinary ones. Requires lo + hi = kernel size, so the output is exactly 2H.
    """

    def phase_taps(lo: int, phase: int, size: int) -> tuple[int, tuple[int, int]]:
        start = (lo - phase) % 2
        before = (lo - phase - start) // 2
        return start, (before, len(range(start, size, 2)) - 1 - before)

    (lo_h, _), (lo_w, _) = padding
    phases = []
    for a in (0, 1):
        start_h, pad_h = phase_taps(lo_h, a, kernel.shape[0])
        row = []
        for b in (0, 1):
            start_w, pad_w = phase_taps(lo_w, b, kernel.shape[1])
            taps = kernel[start_h::2, start_w::2]
            row.append(
                jax.lax.conv_general_dilated(
                    x, taps, (1, 1), (pad_h, pad_w), dimension_numbers=("NHWC", "HWIO", "NHWC")
                )
            )
        phases.append(jnp.stack(row, axis=3))  # [B, H, W, 2 (b), O]
    y = jnp.stack(phases, axis=2)  # [B, H, 2 (a), W, 2 (b), O]
    batch, height, _, width, _, channels = y.shape
    return y.reshape(batch, 2 * height, 2 * width, channels)


class SubpixelConvTranspose(nnx.ConvTranspose):
    """`nnx.ConvTranspose` with stride 2, computed by `subpixel_conv_transpose`: the same
    parameters (so checkpoints, the PyTorch converter and LoRA see an `nnx.ConvTranspose`) and
    the same numbers up to float summation order."""

    def __init__(
        self, in_features: int, out_features: int, kernel_size, *, strides, padding, **kwargs
    ):
        if tuple(np.broadcast_to(strides, 2)) != (2, 2):
            raise ValueError(f"strides must be 2, got {strides}")
        for (lo, hi), size in zip(padding, kernel_size, strict=True):
            if lo + hi != size:
                raise ValueError(f"padding {padding} must sum to the kernel size {kernel_size}")
        super().__init__(
            in_features, out_features, kernel_size, strides=strides, padding=padding, **kwargs
        )

    def __call__(self, inputs: jax.Array) -> jax.Array:
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype(
            (inputs, self.kernel[...], bias), dtype=self.dtype
        )
        y = subpixel_conv_transpose(inputs, kernel, self.padding)
        return y if bias is None else y + bias


class Upsample(nnx.Module):
    """Doubles the resolution: transposed 5x5 conv (PyTorch stride 2, padding 2, output padding
    1, i.e. dilated-input padding (2, 3)), then a 3x3 conv."""

    def __init__(self, ch: int, *, rngs: nnx.Rngs):
        self.deconv = SubpixelConvTranspose(
            ch, ch, (5, 5), strides=2, padding=((2, 3), (2, 3)), rngs=rngs
        )
        self.conv = nnx.Conv(ch, ch, (3, 3), rngs=rngs)

    def __call__(self, x):
        return self.conv(self.deconv(x))


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError with one line naming the first missing or invalid model config field."""
    missing = [name for name in REQUIRED_FIELDS if name not in config]
    if missing:
        raise ValueError(f"model config is missing field(s) {missing}")
    levels = len(config.channel_mults)
    checks = [
        ("time_embedding", config.time_embedding in TIME_EMBEDDINGS, f"one of {TIME_EMBEDDINGS}"),
        ("attention_impl", config.attention_impl in IMPLEMENTATIONS, f"one of {IMPLEMENTATIONS}"),
        ("channel_mults", levels >= 1, "non-empty"),
        ("attention_levels", all(0 <= i < levels for i in config.attention_levels), "< levels"),
        ("image_size", config.image_size % 2 ** (levels - 1) == 0, "divisible by 2^(levels-1)"),
        ("dropout", 0.0 <= config.dropout < 1.0, "in [0, 1)"),
        ("num_timesteps", config.num_timesteps >= 2, ">= 2"),
    ]
    positive = ("base_channels", "num_res_blocks", "num_heads", "norm_groups", "image_channels")
    for name in (*positive, "attention_chunk"):
        checks.append((name, config[name] >= 1, ">= 1"))
    for name in ("num_classes", "num_devices"):
        checks.append((name, config[name] >= 0, ">= 0 (the null index 0 is added)"))
    for names, count in (("class_names", "num_classes"), ("device_names", "num_devices")):
        if names in config:
            ok = len(config[names]) == config[count]
            checks.append((names, ok, f"of length {count}={config[count]}"))
    for name, ok, expected in checks:
        if not ok:
            raise ValueError(f"model config field '{name}' must be {expected}, got {config[name]}")
    for mult in config.channel_mults:
        if (config.base_channels * mult) % config.norm_groups:
            raise ValueError(
                f"model config field 'norm_groups' must divide {config.base_channels * mult}"
            )


class UNet(nnx.Module):
    """Conditional epsilon-prediction U-Net; see the module docstring for the layout."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        validate_config(config)
        ch, emb_dim = config.base_channels, 4 * config.base_channels
        self.time_embedding = config.time_embedding
        if config.time_embedding == "table":
            # Learnable table initialised with sinusoids, as published (init is deterministic).
            t = jnp.arange(config.num_timesteps)
            self.time_table = nnx.Param(sinusoidal_embedding(t, ch))
        self.time_dense1 = nnx.Linear(ch, emb_dim, rngs=rngs)
        self.time_dense2 = nnx.Linear(emb_dim, emb_dim, rngs=rngs)
        if config.get("guidance_input", False):
            # Zero-initialized output: a student built from a teacher starts as the teacher's
            # conditional network, whatever w it is given.
            self.guidance_dense1 = nnx.Linear(ch, emb_dim, rngs=rngs)
            self.guidance_dense2 = nnx.Linear(emb_dim, emb_dim, kernel_init=_zeros, rngs=rngs)
        self.class_embed = nnx.Embed(config.num_classes + 1, ch, rngs=rngs)
        self.device_embed = nnx.Embed(config.num_devices + 1, ch, rngs=rngs)
        self.cond_dense1 = nnx.Linear(2 * ch, emb_dim, rngs=rngs)
        self.cond_dense2 = nnx.Linear(emb_dim, emb_dim, rngs=rngs)
        self.head = nnx.Conv(config.image_channels + 1, ch, (3, 3), rngs=rngs)

        block = functools.partial(ResBlock, emb_dim=emb_dim, config=config, rngs=rngs)
        down, skips, now = [], [ch], ch
        last = len(config.channel_mults) - 1
        for level, mult in enumerate(config.channel_mults):
            for _ in range(config.num_res_blocks):
                attn = level in config.attention_levels
                down.append(block(now, ch * mult, attn=attn))
                now = ch * mult
                skips.append(now)
            if level != last:
                down.append(Downsample(now, rngs=rngs))
                skips.append(now)
        self.down = nnx.List(down)
        self.middle = nnx.List(
            [block(now, now, attn=config.middle_attention), block(now, now, attn=False)]
        )
        up = []
        for level in reversed(range(len(config.channel_mults))):
            out = ch * config.channel_mults[level]
            for _ in range(config.num_res_blocks + 1):
                attn = config.attention_in_up_path and level in config.attention_levels
                up.append(block(now + skips.pop(), out, attn=attn))
                now = out
            if level != 0:
                up.append(Upsample(now, rngs=rngs))
        self.up = nnx.List(up)
        self.tail_norm = group_norm(now, config.norm_groups, rngs=rngs)
        self.tail_conv = nnx.Conv(now, config.image_channels, (3, 3), kernel_init=_zeros, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        class_ids: jax.Array,
        device_ids: jax.Array,
        box_mask: jax.Array,
        *,
        dropout_rng: jax.Array | None = None,
        guidance_weight: jax.Array | None = None,
    ) -> jax.Array:
        """Predicts the noise epsilon.

        Args:
          x: float [B, H, W, C] noisy image in [-1, 1].
          t: float [B] timestep index in [0, T-1]; fractional values interpolate the table.
          class_ids, device_ids: int [B], 0 = null (unconditional).
          box_mask: float [B, H, W, 1] lesion-box mask in {0, 1}.
          dropout_rng: None for evaluation, else one PRNG key for all dropout in this call.
          guidance_weight: float [B], the guidance weight w of a model built with
            guidance_input (required there, refused elsewhere).

        Returns:
          float [B, H, W, C] predicted epsilon.
        """
        if self.time_embedding == "table":
            temb = interpolate_rows(self.time_table[...], t)
        else:
            temb = sinusoidal_embedding(t, self.time_dense1.in_features)
        temb = self.time_dense2(nnx.swish(self.time_dense1(temb)))
        if hasattr(self, "guidance_dense1") != (guidance_weight is not None):
            raise ValueError("guidance_weight is required by, and only by, a guidance_input model")
        if guidance_weight is not None:
            # w in [0, ~4] scaled onto the time embedding's frequency range (t in [0, T-1]).
            wemb = sinusoidal_embedding(
                GUIDANCE_SCALE * guidance_weight, self.guidance_dense1.in_features
            )
            temb = temb + self.guidance_dense2(nnx.swish(self.guidance_dense1(wemb)))
        cemb = jnp.concatenate([self.class_embed(class_ids), self.device_embed(device_ids)], -1)
        cemb = self.cond_dense2(nnx.swish(self.cond_dense1(cemb)))
        block_index = itertools.count()  # a distinct dropout stream per residual block

        def res(block, h):
            index = next(block_index)
            rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, index)
            return block(h, temb, cemb, rng)

        h = self.head(jnp.concatenate([x, box_mask.astype(x.dtype)], axis=-1))
        skips = [h]
        for block in self.down:
            h = res(block, h) if isinstance(block, ResBlock) else block(h)
            skips.append(h)
        for block in self.middle:
            h = res(block, h)
        for block in self.up:
            if isinstance(block, ResBlock):
                h = res(block, jnp.concatenate([h, skips.pop()], axis=-1))
            else:
                h = block(h)
        return self.tail_conv(nnx.swish(self.tail_norm(h)))


def count_params(config: ml_collections.ConfigDict) -> int:
    """Number of trainable parameters, counted on an abstract model (nothing is allocated)."""
    model = nnx.eval_shape(lambda: UNet(config, rngs=nnx.Rngs(0)))
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    return int(sum(np.prod(leaf.shape) for leaf in leaves))


def forward_flops(config: ml_collections.ConfigDict, batch_size: int = 1) -> float:
    """FLOPs of one forward pass, from XLA's cost analysis of the lowered (uncompiled) program
    with plain attention (the chunked loop's body would be counted once); nothing is allocated."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.attention_impl = "plain"
    graphdef, state = nnx.split(nnx.eval_shape(lambda: UNet(config, rngs=nnx.Rngs(0))))
    size, shape = config.image_size, jax.ShapeDtypeStruct
    images = shape((batch_size, size, size, config.image_channels), jnp.float32)
    ids = shape((batch_size,), jnp.int32)
    # A guidance-input student also embeds its guidance weight w.
    w = {"guidance_weight": jnp.ones((batch_size,))} if config.get("guidance_input") else {}
    lowered = jax.jit(
        lambda state, x, t, ids, box: nnx.merge(graphdef, state)(x, t, ids, ids, box, **w)
    ).lower(
        state,
        images,
        shape((batch_size,), jnp.float32),
        ids,
        shape((batch_size, size, size, 1), jnp.float32),
    )
    return float(lowered.cost_analysis()["flops"])
