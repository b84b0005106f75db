"""Import of published BUSGen PyTorch weights: layout, forward-pass equality, errors, export,
periodic training checkpoints, and the published sampling reproduced on converted weights."""

import json
import pathlib
import re
import sys
import textwrap

import dpm_solver_reference
import jax
import numpy as np
import pytest
from flax import nnx

from busgen_jax.data import box_priors
from busgen_jax.diffusion import generator
from busgen_jax.jobs import convert_weights
from busgen_jax.models import UNet, count_params, model_config, params_io, presets, torch_convert

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
    with pytest.raises(ValueError, match="several U-Net.*ema_model"):
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
    monkeypatch.setattr(presets, "model_config", lambda name: _small_config())
    convert_weights.main(
        [
            "--checkpoint",
            str(tmp_path / "ckpt.pt"),
            "--preset",
            "busgen_toy",
            "--out",
            str(tmp_path / "export"),
        ]
    )
    restored_config = params_io.load_model_config(tmp_path / "export")
    assert restored_config.channel_mults == list(config.channel_mults)
    model = params_io.load_params(_abstract(restored_config), tmp_path / "export")
    expected = torch_convert.convert_state_dict(state_dict, config)
    assert _same_state(nnx.state(model, nnx.Param), expected)

    from busgen_jax.diffusion import generator

    model, spec = generator.load_generator(tmp_path / "export")  # a complete generator
    assert spec.class_names == ("benign", "malignant") and spec.prediction == "eps"
    assert _same_state(nnx.state(model, nnx.Param), expected)

    params_io.save_params(expected, tmp_path / "again")
    again = params_io.load_params(_abstract(config), tmp_path / "again")
    assert _same_state(nnx.state(again, nnx.Param), expected)
    with pytest.raises(FileNotFoundError, match="missing"):
        params_io.load_params(_abstract(config), tmp_path / "missing")


_SCHEDULER_MODULE = textwrap.dedent(
    """
    from torch.optim.lr_scheduler import LRScheduler

    class GradualWarmupScheduler(LRScheduler):  # as the official Scheduler.py wraps a cosine one
        def __init__(self, optimizer, multiplier, warm_epoch, after_scheduler=None):
            self.multiplier, self.total_epoch = multiplier, warm_epoch
            self.after_scheduler, self.finished = after_scheduler, False
            super().__init__(optimizer)

        def get_lr(self):
            return [lr * self.multiplier for lr in self.base_lrs]

    class Payload:  # what an unsafe loader would run: exec of code that writes a file
        def __init__(self, path):
            self.path = path

        def __reduce__(self):
            return exec, (f"open({self.path!r}, 'w').close()",)
    """
)


def test_periodic_training_checkpoint_loads_safely(torch_reference, tmp_path, monkeypatch):
    """A Train.py-style checkpoint (model, optimizer state, LR schedulers whose state holds the
    cosine scheduler and the optimizer objects, a class of the training code's own) gives the
    model's tensors; none of the file's code runs, and the training code need not be importable."""
    import torch

    net, state_dict = torch_reference
    (tmp_path / "Scheduler.py").write_text(_SCHEDULER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import Scheduler

    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-4)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=70)
    warmup = Scheduler.GradualWarmupScheduler(optimizer, 2.5, 7, after_scheduler=cosine)
    marker = tmp_path / "code-ran"
    checkpoint = {
        "net_model": {f"module.{k}": v for k, v in net.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": warmup.state_dict(),
        "warmup_scheduler": warmup,
        "payload": Scheduler.Payload(str(marker)),
        "epoch": 5,
    }
    torch.save(checkpoint, tmp_path / "ckpt_5_.pt")
    monkeypatch.delitem(sys.modules, "Scheduler")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    with pytest.raises(Exception, match="Unsupported global"):  # the plain safe loader refuses
        torch.load(tmp_path / "ckpt_5_.pt", weights_only=True)

    loaded = torch_convert.load_torch_checkpoint(tmp_path / "ckpt_5_.pt")
    assert not marker.exists()
    config = _small_config()
    expected = torch_convert.convert_state_dict(state_dict, config)
    assert _same_state(torch_convert.convert_state_dict(loaded, config), expected)
    assert "Scheduler" not in sys.modules


def _convert(argv: list[str], capsys) -> str:
    """stderr of a failing conversion command (exit status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        convert_weights.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_converter_errors_are_one_line_naming_the_file_or_tensor(
    torch_reference, tmp_path, monkeypatch, capsys
):
    import torch

    net, state_dict = torch_reference
    monkeypatch.setattr(presets, "model_config", lambda name: _small_config())
    good = tmp_path / "good.pt"
    torch.save({"net_model": net.state_dict(), "epoch": 5}, good)
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    renamed = {("head.kernel" if k == "head.weight" else k): v for k, v in state_dict.items()}
    lacking = {k: v for k, v in state_dict.items() if k != "middleblocks.0.attn.proj_q.weight"}
    extra = dict(state_dict, **{"tail.9.weight": np.zeros(3, np.float32)})
    wrong = dict(state_dict, **{"tail.2.bias": np.zeros(4, np.float32)})
    from torch_reference_unet import TorchUNet

    other_layout = TorchUNet(
        ch=32, ch_mult=(1, 2), num_res_blocks=1, num_timesteps=50, groups=8, n_devices=20
    ).state_dict()
    files = {
        "renamed": renamed,
        "lacking": lacking,
        "extra": extra,
        "wrong": wrong,
        "other": other_layout,
    }
    for name, tensors in files.items():
        torch.save(
            {k: torch.as_tensor(np.asarray(v)) for k, v in tensors.items()}, tmp_path / f"{name}.pt"
        )
    out = ["--out", str(tmp_path / "out")]
    cases = {
        "empty.pt": ("busgen_toy", r"empty\.pt: empty file"),
        "truncated.pt": ("busgen_toy", r"truncated\.pt: not a readable PyTorch checkpoint"),
        "missing.pt": ("busgen_toy", r"missing\.pt: no such checkpoint file"),
        "renamed.pt": ("busgen_toy", r"renamed\.pt.*no tensor 'head\.weight'"),
        "lacking.pt": (
            "busgen_toy",
            r"lacking\.pt.*no tensor 'middleblocks\.0\.attn\.proj_q\.weight'",
        ),
        "extra.pt": ("busgen_toy", r"extra\.pt.*'tail\.9\.weight' matches no parameter"),
        "wrong.pt": ("busgen_toy", r"wrong\.pt.*'tail\.2\.bias' has shape \(4,\)"),
        "other.pt": ("busgen_toy", r"other\.pt as preset busgen_toy.*dev_condEmbedding"),
        "good.pt": ("busgen_large", r"--preset is 'busgen_large'"),
    }
    for file, (preset, pattern) in cases.items():
        argv = ["--checkpoint", str(tmp_path / file), "--preset", preset, *out]
        err = _convert(argv, capsys)
        assert err.count("\n") == 1 and err.startswith("error: "), (file, err)
        assert re.search(pattern, err), (file, err)
    err = _convert(
        ["--checkpoint", str(good), "--preset", "busgen_toy", "--key", "ema", *out], capsys
    )
    assert err.startswith("error: ") and "no entry 'ema'" in err and "net_model" in err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def published_export(torch_reference, tmp_path_factory):
    """The random-weight twin converted by the command, as a generator directory."""
    import torch

    net, _ = torch_reference
    directory = tmp_path_factory.mktemp("published")
    torch.save({"net_model": net.state_dict(), "epoch": 70}, directory / "ckpt_70_.pt")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(presets, "model_config", lambda name: _small_config())
        convert_weights.main(
            [
                "--checkpoint",
                str(directory / "ckpt_70_.pt"),
                "--preset",
                "busgen_toy",
                "--out",
                str(directory / "export"),
            ]
        )
    return directory / "export"


_BOXES = [[0.16, 0.16, 0.79, 0.6], [0.3, 0.31, 0.69, 0.94], [0.05, 0.5, 0.42, 0.97], []]
_STEPS = 10


def _published_reference(net):
    """(class ids, device ids, box masks, key, reference images) of the published pipeline:
    boxes rasterized with int(), the noise the project draws for the key, 10 steps of the
    published solver (float64) on the PyTorch twin, then the project's image read-out."""
    from torch_reference_unet import published_guided_eps

    classes, devices = np.array([1, 2, 1, 2]), np.array([3, 1, 0, 2])
    masks = np.zeros((4, 32, 32, 1), np.float32)
    for i, boxes in enumerate(_BOXES):
        if boxes:
            x1, y1, x2, y2 = boxes
            masks[i, int(y1 * 32) : int(y2 * 32), int(x1 * 32) : int(x2 * 32)] = 1.0
    key = jax.random.key(4)
    noise = np.asarray(jax.random.normal(jax.random.split(key)[0], (4, 32, 32, 3)), np.float64)
    eps_fn = published_guided_eps(net, classes, devices, masks, guidance_weight=1.8)
    betas = np.linspace(1e-4, 0.028, 50)
    x = dpm_solver_reference.dpm_solver_pp_singlestep(eps_fn, betas, noise, _STEPS, order=3)
    return classes, devices, masks, key, np.clip(x.mean(-1, keepdims=True), -1.0, 1.0)


def _sample(directory, classes, devices, key, **overrides):
    model, spec = generator.load_generator(directory)
    how = spec.sampling
    masks = np.stack(
        [box_priors.box_mask([b] if b else [], 32, 32, how["box_raster"]) for b in _BOXES]
    )
    sample_fn = generator.make_sample_fn(
        spec,
        sampler=how["sampler"],
        steps=_STEPS,
        guidance_weight=how["guidance_weight"],
        skip=how["skip"],
        **overrides,
    )
    return masks, np.asarray(sample_fn(model, key, classes, devices, masks), np.float64)


def test_converted_generator_samples_as_the_published_code(torch_reference, published_export):
    """A converted generator's spec names the published preset, and sampling with it reproduces
    the published pipeline (written independently in the tests) on the converted twin."""
    net, _ = torch_reference
    _, spec = generator.load_generator(published_export)
    assert spec.sampling == presets.sampling_preset("published")
    assert generator.sampling_settings(spec, {"clip_x0": True})["preset"] == "custom"
    with pytest.raises(ValueError, match="'time_input'"):
        generator.sampling_settings(spec, {"time_input": "round"})
    classes, devices, ref_masks, key, expected = _published_reference(net)
    masks, got = _sample(published_export, classes, devices, key)
    np.testing.assert_array_equal(masks, ref_masks)
    inside = np.abs(expected) < 0.99  # pixels the read-out's clipping leaves to compare
    assert inside.mean() > 0.2
    np.testing.assert_allclose(got, expected, atol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "setting,project_value",
    [("drop_box_mask", False), ("time_input", "interpolate"), ("clip_x0", True)],
)
def test_each_published_setting_matters(torch_reference, published_export, setting, project_value):
    """Switching any one setting to the project's choice moves the samples far from the
    published pipeline's (the solver variant is checked on Gaussian data in test_samplers)."""
    net, _ = torch_reference
    classes, devices, _, key, expected = _published_reference(net)
    got = _sample(published_export, classes, devices, key, **{setting: project_value})[1]
    assert np.abs(got - expected).max() > 0.05


def test_synthesize_published_preset_is_the_published_sampling():
    """configs/synthesize.py:published sets every setting, so it samples as published whatever
    generator it is given; the default preset leaves how the network is called to the spec."""
    from busgen_jax.core import config_files

    project_spec = generator.GeneratorSpec({}, "eps", ("benign",), ("a",), 32)
    for preset, expected in (("published", "published"), ("default", "project")):
        config = config_files.load(f"configs/synthesize.py:{preset}")
        fields = {k: config[k] for k in presets.SAMPLING_FIELDS}
        assert generator.sampling_settings(project_spec, fields)["preset"] == expected
    assert fields["drop_box_mask"] is None and fields["box_raster"] is None


@pytest.mark.parametrize("name", ["tiny", "small", "efficient", "busgen_toy"])
def test_torch_twin_has_the_architecture_of_each_preset(name):
    """The speed benchmark's PyTorch twins: every trainable tensor of the project's U-Net has a
    counterpart of the same size (the time table of a sinusoidal net is frozen)."""
    pytest.importorskip("torch")
    from torch_reference_unet import twin

    config = model_config(name)
    trainable = [p for p in twin(config).parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == count_params(config)
    model = nnx.eval_shape(lambda: UNet(config, rngs=nnx.Rngs(0)))
    jax_sizes = [int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]
    assert sorted(p.numel() for p in trainable) == sorted(jax_sizes)
