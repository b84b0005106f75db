"""LoRA for the NNX U-Net: identity at init, exact merge, new condition rows, adapter files."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from busgen_jax.diffusion import generator
from busgen_jax.models import lora, presets
from busgen_jax.models.unet import UNet

BASE_CLASSES = ("normal", "benign", "malignant")
BASE_DEVICES = ("scanner-a", "scanner-b")
# Every kind of layer: dense, 3x3 conv, 1x1 conv, strided 3x3 and 5x5 convs, transposed conv.
ALL_LAYERS = lora.DEFAULT_TARGET + r"|head|tail_conv|conv3|conv5|deconv|/conv$|time_dense\d"


def _perturb(module: nnx.Module, kind, seed: int, scale: float) -> None:
    """Adds seeded noise to every `kind` variable, so no zero-initialised layer hides a path."""
    rng = np.random.default_rng(seed)
    state = nnx.state(module, kind)
    noisy = jax.tree.map(
        lambda v: v + scale * jnp.asarray(rng.standard_normal(v.shape), v.dtype), state
    )
    nnx.update(module, noisy)


def _make_test_model(seed: int = 0, **overrides) -> UNet:
    config = presets.model_config("tiny")
    config.update(num_classes=len(BASE_CLASSES), num_devices=len(BASE_DEVICES), **overrides)
    model = UNet(config, rngs=nnx.Rngs(seed))
    _perturb(model, nnx.Param, seed, 0.05)
    return model


def _inputs(seed: int = 1, batch: int = 2):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, 32, 32, 1)), jnp.float32)
    t = jnp.asarray(rng.uniform(0, 499, batch), jnp.float32)
    mask = np.zeros((batch, 32, 32, 1), np.float32)
    mask[:, 8:20, 10:24] = 1.0
    return x, t, jnp.asarray(mask)


def _adapt(model, task_classes=("benign", "dcis"), init="mean", target=ALL_LAYERS, rank=2):
    lora.apply_lora(model, {"rank": rank, "alpha": 3.0, "target": target}, rngs=nnx.Rngs(5))
    rows = lora.vocabulary_rows(task_classes, BASE_CLASSES)
    return lora.extend_vocabulary(
        model, rows, lora.vocabulary_rows(BASE_DEVICES, BASE_DEVICES), init
    )


def test_adapted_model_equals_base_at_init():
    x, t, mask = _inputs()
    base = _make_test_model()
    # Base ids: benign = 2; task ids: benign = 1 (task classes are benign, dcis).
    expected = base(x, t, jnp.array([2, 0]), jnp.array([1, 2]), mask)
    adapted = _adapt(base)
    assert len(lora.adapted_paths(adapted)) > 40  # every layer kind was wrapped
    out = adapted(x, t, jnp.array([1, 0]), jnp.array([1, 2]), mask)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))


@pytest.mark.parametrize("init", ["null", "mean"])
def test_new_class_row_starts_from_null_or_mean_row(init):
    x, t, mask = _inputs(batch=1)
    base = _make_test_model()
    table = np.asarray(base.class_embed.embedding[...])
    null_out = base(x, t, jnp.array([0]), jnp.array([1]), mask)
    adapted = _adapt(base, init=init)
    expected_row = table[0] if init == "null" else table[1:].mean(axis=0)
    np.testing.assert_allclose(np.asarray(adapted.class_embed.table())[2], expected_row, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(adapted.class_embed.table())[:2], table[[0, 2]])
    # Only the new row trains: it is the one LoRAParam of the class embedding.
    assert nnx.state(adapted.class_embed, nnx.LoRAParam)["new_rows"].shape == (1, table.shape[1])
    if init == "null":  # 'dcis' then starts as the unconditional model
        dcis = adapted(x, t, jnp.array([2]), jnp.array([1]), mask)
        np.testing.assert_array_equal(np.asarray(dcis), np.asarray(null_out))


def test_merge_equals_adapted_forward_and_restores_the_plain_structure():
    x, t, mask = _inputs()
    reference = _make_test_model()
    adapted = _adapt(_make_test_model())
    _perturb(adapted, nnx.LoRAParam, seed=3, scale=0.1)  # trained-looking adapters and rows
    classes, devices = jnp.array([1, 2]), jnp.array([2, 0])
    expected = adapted(x, t, classes, devices, mask)
    merged = lora.merge_lora(adapted)
    out = merged(x, t, classes, devices, mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=2e-5, rtol=1e-5)
    assert lora.count_params(merged) == 0
    assert not lora.adapted_paths(merged)
    ref_paths = {p for p, _ in nnx.to_flat_state(nnx.state(reference, nnx.Param))}
    assert {p for p, _ in nnx.to_flat_state(nnx.state(merged, nnx.Param))} == ref_paths
    assert merged.class_embed.embedding.shape == (3, reference.class_embed.features)
    # The adapters did change the function (the merge is not trivially the base).
    base_out = reference(x, t, jnp.array([2, 0]), devices, mask)
    assert float(jnp.abs(out[:1] - base_out[:1]).max()) > 1e-3


def test_dense_adapter_is_w_plus_scaled_low_rank_product():
    linear = nnx.Linear(6, 5, rngs=nnx.Rngs(0))
    wrapped = lora.LoRADense(linear, rank=3, scale=0.5, rngs=nnx.Rngs(1))
    _perturb(wrapped, nnx.LoRAParam, seed=2, scale=1.0)
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    w, b = np.asarray(linear.kernel[...]), np.asarray(linear.bias[...])
    a, bb = np.asarray(wrapped.lora.lora_a[...]), np.asarray(wrapped.lora.lora_b[...])
    np.testing.assert_allclose(
        np.asarray(wrapped(jnp.asarray(x))), x @ w + b + 0.5 * x @ a @ bb, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0)),
        lambda: nnx.Conv(3, 4, (5, 5), strides=2, padding=((2, 2), (2, 2)), rngs=nnx.Rngs(0)),
        lambda: nnx.ConvTranspose(
            3, 4, (5, 5), strides=2, padding=((2, 3), (2, 3)), rngs=nnx.Rngs(0)
        ),
    ],
)
def test_conv_adapter_is_a_rank_r_conv_then_1x1(make):
    conv = make()
    wrapped = lora.LoRAConv(conv, rank=2, scale=1.5, rngs=nnx.Rngs(1))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 3)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(wrapped(x)), np.asarray(conv(x)))  # B = 0 at init
    _perturb(wrapped, nnx.LoRAParam, seed=2, scale=1.0)
    # Independent computation: the low-rank path is the rank-r conv's output times B, per pixel.
    low = np.einsum("bhwr,ro->bhwo", np.asarray(wrapped.down(x)), np.asarray(wrapped.up[...]))
    np.testing.assert_allclose(np.asarray(wrapped(x)), np.asarray(conv(x)) + 1.5 * low, atol=1e-5)
    # Its merged kernel gives the same function.
    merged = make()
    merged.kernel = nnx.Param(conv.kernel[...] + wrapped.delta())
    np.testing.assert_allclose(np.asarray(merged(x)), np.asarray(wrapped(x)), atol=1e-5)


def test_count_params_matches_closed_form():
    model = _adapt(_make_test_model(), target=r"(conv1|attn/q)$", rank=3)
    expected = 0
    for _, module in nnx.iter_modules(model):
        if isinstance(module, lora.LoRADense):
            expected += 3 * (module.base.in_features + module.base.out_features)
        elif isinstance(module, lora.LoRAConv):
            kh, kw = module.base.kernel_size
            expected += kh * kw * module.base.in_features * 3 + 3 * module.base.out_features
    expected += model.class_embed.base.features  # one new class row ('dcis')
    assert lora.count_params(model) == expected
    assert lora.adapted_paths(model)[:1] == ["class_embed"]


def test_bad_lora_configs_are_rejected_with_the_field_named():
    model = _make_test_model()
    with pytest.raises(ValueError, match="matches no dense or conv layer"):
        lora.apply_lora(model, {"target": "no_such_layer"})
    with pytest.raises(ValueError, match="config.lora.rank"):
        lora.LoRAConfig.from_mapping({"rank": 0})
    with pytest.raises(ValueError, match="unknown fields"):
        lora.LoRAConfig.from_mapping({"rnak": 4})
    with pytest.raises(ValueError, match="not a valid regex"):
        lora.LoRAConfig.from_mapping({"target": "("})


def test_vocabulary_rows_map_names_and_mark_new_ones():
    assert lora.vocabulary_rows(["malignant", "dcis", "normal"], BASE_CLASSES) == [0, 3, None, 1]


def test_adapter_files_round_trip_and_refuse_another_base(tmp_path):
    x, t, mask = _inputs()
    info = {
        "lora": {"rank": 2, "alpha": 3.0, "target": ALL_LAYERS, "new_row_init": "mean"},
        "class_names": ["benign", "dcis"],
        "device_names": list(BASE_DEVICES),
        "class_rows": lora.vocabulary_rows(["benign", "dcis"], BASE_CLASSES),
        "device_rows": lora.vocabulary_rows(BASE_DEVICES, BASE_DEVICES),
        "base_fingerprint": lora.params_fingerprint(_make_test_model()),
    }
    adapted = lora.adapted_model(_make_test_model(), info)
    _perturb(adapted, nnx.LoRAParam, seed=4, scale=0.1)
    expected = adapted(x, t, jnp.array([2, 1]), jnp.array([1, 0]), mask)
    saved = lora.save_adapter(tmp_path / "adapter", adapted, info)
    assert saved["adapter_params"] == lora.count_params(adapted)
    spec = generator.GeneratorSpec({}, "eps", BASE_CLASSES, BASE_DEVICES, 32)
    merged, task_spec = lora.load_adapter(_make_test_model(), spec, tmp_path / "adapter")
    assert task_spec.class_names == ("benign", "dcis") and task_spec.source == "adapt"
    out = merged(x, t, jnp.array([2, 1]), jnp.array([1, 0]), mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="weights differ"):
        lora.load_adapter(_make_test_model(seed=9), spec, tmp_path / "adapter")
    with pytest.raises(FileNotFoundError, match="adapter.json"):
        lora.load_adapter(_make_test_model(), spec, tmp_path)
