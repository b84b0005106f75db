"""Import of published BUSGen PyTorch weights: layout, forward-pass equality, errors, export."""

import json
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from busgen_jax.models import UNet, model_config, torch_convert

DATA = pathlib.Path(__file__).parent / "data"
_forward = nnx.jit(lambda model, *args: model(*args))


def _published_keys(name: str) -> dict[str, list[int]]:
    return json.loads((DATA / f"busgen_torch_unet_{name}.keys.json").read_text())


def _small_config():
    """The published layout shrunk: 32 channels, 2 levels, 1 residual block, 32 px, T = 50."""
    config = model_config("busgen_toy")
    del config["device_names"]
    config.update(
        image_size=32,
        base_channels=32,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_levels=(0, 1),
        norm_groups=8,
        num_timesteps=50,
        attention_impl="plain",
    )
    return config


def _abstract(config) -> UNet:
    return nnx.eval_shape(lambda: UNet(config, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def torch_reference():
    """A small published-layout PyTorch model with random weights and its numpy state_dict."""
    torch = pytest.importorskip("torch")
    from torch_reference_unet import TorchUNet

    torch.manual_seed(0)
    net = TorchUNet(ch=32, ch_mult=(1, 2), num_res_blocks=1, num_timesteps=50, groups=8).eval()
    with torch.no_grad():
        for p in net.parameters():  # random everywhere, biases and norms included
            p.copy_(torch.randn_like(p) * 0.2)
    return net, {k: v.numpy().copy() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("name,devices", [("toy", 4), ("full", 20)])
def test_reference_model_has_the_published_state_dict_layout(name, devices):
    torch = pytest.importorskip("torch")
    from torch_reference_unet import TorchUNet

    with torch.device("meta"):
        net = TorchUNet(n_devices=devices)
    layout = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert layout == _published_keys(name)


def test_published_toy_layout_converts_exactly():
    # Every published tensor maps to one parameter of the right shape, and nothing is left over.
    zeros = {k: np.zeros(s, np.float32) for k, s in _published_keys("toy").items()}
    state = torch_convert.convert_state_dict(zeros, model_config("busgen_toy"))
    assert sum(x.size for x in jax.tree.leaves(state)) == 47_766_787


def test_forward_matches_pytorch(torch_reference):
    import torch

    net, state_dict = torch_reference
    model = _abstract(_small_config())
    nnx.update(model, torch_convert.convert_state_dict(state_dict, _small_config()))
    rng = np.random.default_rng(1)
    batch = 4
    x = rng.uniform(-1, 1, (batch, 32, 32, 3)).astype(np.float32)
    mask = np.zeros((batch, 32, 32, 1), np.float32)
    for i in range(batch):  # one random lesion box per image, in pixels
        x1, y1 = rng.integers(0, 20, 2)
        w, h = rng.integers(4, 12, 2)
        mask[i, y1 : y1 + h, x1 : x1 + w] = 1.0
    t = rng.integers(0, 50, batch)
    classes, devices = np.array([0, 1, 2, 1]), np.array([3, 0, 1, 2])
    with torch.no_grad():
        expected = net(
            torch.from_numpy(x).permute(0, 3, 1, 2),
            torch.from_numpy(t),
            torch.from_numpy(classes),
            torch.from_numpy(devices),
            torch.from_numpy(mask).permute(0, 3, 1, 2),
        )
    expected = expected.permute(0, 2, 3, 1).numpy()
    got = np.asarray(_forward(model, x, t.astype(np.float32), classes, devices, mask))
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-4
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def _same_state(a, b) -> bool:
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool((x == y).all()), a, b)))


def test_module_prefix_and_nested_checkpoint(torch_reference, tmp_path):
    import torch

    net, state_dict = torch_reference
    config = _small_config()
    plain = torch_convert.convert_state_dict(state_dict, config)
    prefixed = {f"module.{k}": v for k, v in state_dict.items()}
    assert _same_state(torch_convert.convert_state_dict(prefixed, config), plain)

    wrapped = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save({"net_model": wrapped, "epoch": 3}, tmp_path / "ckpt_3_.pt")
    loaded = torch_convert.load_torch_checkpoint(tmp_path / "ckpt_3_.pt")
    assert _same_state(torch_convert.convert_state_dict(loaded, config), plain)

    torch.save({"net_model": wrapped, "ema_model": wrapped}, tmp_path / "two.pt")
    with pytest.raises(ValueError, match="ema_model"):
        torch_convert.load_torch_checkpoint(tmp_path / "two.pt")
    chosen = torch_convert.load_torch_checkpoint(tmp_path / "two.pt", key="ema_model")
    assert _same_state(torch_convert.convert_state_dict(chosen, config), plain)


def test_bad_state_dicts_name_the_tensor(torch_reference):
    _, state_dict = torch_reference
    config = _small_config()
    missing = dict(state_dict)
    del missing["middleblocks.0.attn.proj_q.weight"]
    with pytest.raises(ValueError, match=r"middleblocks\.0\.attn\.proj_q\.weight"):
        torch_convert.convert_state_dict(missing, config)
    extra = dict(state_dict, **{"upblocks.0.attn.proj.bias": np.zeros(64, np.float32)})
    with pytest.raises(ValueError, match=r"upblocks\.0\.attn\.proj\.bias"):
        torch_convert.convert_state_dict(extra, config)
    wrong = dict(state_dict, **{"head.weight": np.zeros((32, 2, 3, 3), np.float32)})
    with pytest.raises(ValueError, match=r"head\.weight"):
        torch_convert.convert_state_dict(wrong, config)


def test_params_export_round_trip_and_command(torch_reference, tmp_path, monkeypatch):
    import torch

    net, state_dict = torch_reference
    config = _small_config()
    torch.save(net.state_dict(), tmp_path / "ckpt.pt")
    # The command only offers the published presets; point it at the small layout.
    monkeypatch.setattr(torch_convert, "model_config", lambda name: _small_config())
    torch_convert.main(["--checkpoint", str(tmp_path / "ckpt.pt"), "--preset", "busgen_toy",
                        "--out", str(tmp_path / "export")])  # fmt: skip
    restored_config = torch_convert.load_model_config(tmp_path / "export")
    assert restored_config.channel_mults == list(config.channel_mults)
    model = torch_convert.load_params(_abstract(restored_config), tmp_path / "export")
    expected = torch_convert.convert_state_dict(state_dict, config)
    assert _same_state(nnx.state(model, nnx.Param), expected)

    from busgen_jax import generator

    model, spec = generator.load_generator(tmp_path / "export")  # a complete generator
    assert spec.class_names == ("benign", "malignant") and spec.prediction == "eps"
    assert _same_state(nnx.state(model, nnx.Param), expected)

    torch_convert.save_params(expected, tmp_path / "again")
    again = torch_convert.load_params(_abstract(config), tmp_path / "again")
    assert _same_state(nnx.state(again, nnx.Param), expected)
    with pytest.raises(FileNotFoundError, match="missing"):
        torch_convert.load_params(_abstract(config), tmp_path / "missing")
