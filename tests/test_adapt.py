"""The adaptation job end to end on a tiny generator and phantom data: the k-shot set, frozen
base, adapter size and round trip through `load_generator`, resume after a stop."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from generator_fixtures import phantom_dataset
from jax.experimental.compilation_cache import compilation_cache
from test_lora import _make_test_model

from busgen_jax.core import config_files, errors
from busgen_jax.data import phantom, shards
from busgen_jax.diffusion import generator
from busgen_jax.jobs import adapt, layout
from busgen_jax.models import presets
from busgen_jax.training import checkpoints

DEVICES = phantom.PHANTOM_DEVICES[:2]  # the base knows two of the phantom's four scanners


@pytest.fixture(scope="module", autouse=True)
def compilation_cache_dir(tmp_path_factory):
    """The three runs below compile the same train step: compile it once (restored after)."""
    before = (
        jax.config.jax_compilation_cache_dir,
        jax.config.jax_persistent_cache_min_compile_time_secs,
    )
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    compilation_cache.reset_cache()
    yield
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
    compilation_cache.reset_cache()


def _export_base(directory, seed=0):
    """A tiny base generator that knows normal, benign and malignant on two scanners."""
    model = _make_test_model(seed)
    config = presets.model_config("tiny")
    config.update(num_classes=3, num_devices=len(DEVICES))
    spec = generator.GeneratorSpec(
        schedule={"schedule": "linear", "num_timesteps": 500},
        prediction="eps",
        class_names=("normal", "benign", "malignant"),  # no 'dcis': the task brings it
        device_names=DEVICES,
        image_size=32,
    )
    return generator.export_generator(directory, model, config, spec)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt")
    data = phantom_dataset(root / "data", num=96)
    return {"generator": str(_export_base(root / "generator")), "data": str(data)}


def _config(inputs, **overrides):
    config = config_files.load("configs/adapt.py:tiny")
    config.generator = inputs["generator"]
    config.data.paths = [inputs["data"]]
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def adapted(inputs, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    return {"workdir": workdir, **adapt.run(_config(inputs), str(workdir))}


def test_fewshot_dataset_has_k_per_class_and_a_disjoint_heldout_split(inputs, adapted):
    out = adapted["workdir"] / layout.FEWSHOT
    manifest = shards.verify_dataset(out)
    assert manifest["splits"]["train"]["pathology"] == {"benign": 4, "dcis": 4}
    assert set(manifest["splits"]["test"]["pathology"]) == {"benign", "dcis"}
    train, test = list(shards.read_records(out, "train")), list(shards.read_records(out, "test"))
    assert not {r["case_id"] for r in train} & {r["case_id"] for r in test}
    assert not {r["patient_id"] for r in train} & {r["patient_id"] for r in test}
    # The k-shot images are the source's own train records, unchanged.
    source = {r["case_id"]: r for r in shards.read_records(inputs["data"], "train")}
    assert all(source[r["case_id"]]["image"] == r["image"] for r in train)
    # The draw is a function of the seed.
    labels = [r["pathology"] for r in shards.read_records(inputs["data"], "train")]
    draw = adapt.select_shots(labels, ["benign", "dcis"], 4, seed=0, where="data")
    assert draw == adapt.select_shots(labels, ["benign", "dcis"], 4, seed=0, where="data")
    assert draw != adapt.select_shots(labels, ["benign", "dcis"], 4, seed=1, where="data")


def test_training_changes_only_the_adapters_and_new_rows(inputs, adapted):
    losses = [m["loss"] for _, m in adapted["history"]]
    assert len(losses) == 6 and np.all(np.isfinite(losses))
    assert all(m["grad_norm"] > 0 for _, m in adapted["history"])
    state = adapted["state"]
    base, _ = generator.load_generator(inputs["generator"])
    expected = {p: v for p, v in nnx.to_flat_state(nnx.state(base, nnx.Param))}
    frozen = {
        tuple(k for k in p if k != "base"): v for p, v in nnx.to_flat_state(state.rest)
    }  # the wrappers hold the pretrained layer as `base`
    assert frozen.keys() == expected.keys()
    for path, value in expected.items():
        np.testing.assert_array_equal(np.asarray(frozen[path][...]), np.asarray(value[...]))
    trained = dict(nnx.to_flat_state(state.params))
    lora_b = [v for p, v in trained.items() if p[-1] in ("lora_b", "up")]
    assert lora_b and all(float(jnp.abs(v[...]).max()) > 0 for v in lora_b)  # zero at init
    table = np.asarray(base.class_embed.embedding[...])
    new_row = np.asarray(trained[("class_embed", "new_rows")][...])
    assert not np.allclose(new_row, table[1:].mean(axis=0)[None])  # moved from its init


def test_adapter_is_small_and_loads_on_the_base_like_the_trained_model(inputs, adapted):
    directory = adapted["workdir"] / layout.ADAPTER
    info = adapted["info"]
    assert (directory / "adapter.json").is_file() and (directory / "params").is_dir()
    assert info["adapter_params"] < info["full_params"] / 5
    assert 0 < info["adapter_bytes"] < info["full_bytes"]
    assert info["class_rows"] == [0, 2, None] and info["device_names"][:2] == list(DEVICES)
    model, spec = generator.load_generator(inputs["generator"], adapter=directory)
    assert spec.class_names == ("benign", "dcis") and spec.source == "adapt"
    trained = adapted["state"].model(adapted["state"].ema_params)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 32, 32, 1)), jnp.float32)
    t, mask = jnp.array([0.0, 100.0, 250.0, 499.0]), jnp.zeros((4, 32, 32, 1))
    classes, devices = jnp.array([1, 2, 2, 0]), jnp.array([1, 3, 0, 2])
    np.testing.assert_allclose(
        np.asarray(model(x, t, classes, devices, mask)),
        np.asarray(trained(x, t, classes, devices, mask)),
        atol=2e-5,
        rtol=1e-5,
    )
    assert adapted["grid"].stat().st_size > 0


def test_resume_after_a_stop_gives_the_uninterrupted_adapter(
    inputs, adapted, tmp_path, monkeypatch
):
    config = _config(inputs)
    config.sample.per_class = 0  # the grid was checked above
    save = checkpoints.save

    def save_then_stop(manager, step, state, data_iter):
        save(manager, step, state, data_iter)
        if step == 3:
            manager.wait_until_finished()
            raise KeyboardInterrupt("preempted")

    monkeypatch.setattr(checkpoints, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        adapt.run(config, str(tmp_path))
    monkeypatch.setattr(checkpoints, "save", save)
    resumed = adapt.run(config, str(tmp_path))
    assert [s for s, _ in resumed["history"]] == [4, 5, 6]
    full = dict(nnx.to_flat_state(adapted["state"].ema_params))
    for path, value in nnx.to_flat_state(resumed["state"].ema_params):
        np.testing.assert_allclose(np.asarray(value[...]), np.asarray(full[path][...]), atol=1e-6)


def test_a_distilled_student_is_refused_by_name(inputs, tmp_path):
    """A student samples in a few fixed steps at its own guidance input; adapters belong on its
    teacher, which is then distilled again."""
    student = tmp_path / "student"
    shutil.copytree(inputs["generator"], student)
    spec_path = student / generator.SPEC_FILE
    spec = json.loads(spec_path.read_text())
    spec["student"] = {"teacher": "/runs/teacher", "steps": 4, "guidance_input": True}
    spec_path.write_text(json.dumps(spec))
    with pytest.raises(errors.JobError, match=r"config.generator: .*student \(of /runs/teacher\)"):
        adapt.run(_config(inputs, generator=str(student)), str(tmp_path / "run"))


def test_bad_inputs_fail_with_one_clear_line(inputs, adapted, tmp_path):
    with pytest.raises(
        errors.JobError, match=r"class .benign. has \d+ train records, fewer than shots=50"
    ):
        adapt.run(_config(inputs, shots=50), str(tmp_path / "a"))
    with pytest.raises(errors.JobError, match="config.generator"):
        adapt.run(_config(inputs, generator=str(tmp_path / "nowhere")), str(tmp_path / "b"))
    with pytest.raises(errors.JobError, match="config.lora.rank"):
        config = _config(inputs)
        config.lora.rank = 0
        adapt.run(config, str(tmp_path / "c"))
    # A restart with another draw must not train on a k-shot set it did not draw.
    with pytest.raises(errors.JobError, match="another config"):
        adapt.write_fewshot_dataset(_config(inputs, seed=1), adapted["workdir"] / layout.FEWSHOT)
    with pytest.raises(ValueError, match="weights differ"):
        other = _export_base(tmp_path / "other", seed=1)
        generator.load_generator(other, adapter=adapted["workdir"] / layout.ADAPTER)
