"""The whole BUSGen story on the built-in phantom, in minutes on a laptop CPU.

    busgen demo --config=configs/demo.py:default --workdir=workdir/demo     (what `make demo` runs)
    busgen demo --config=configs/demo.py:tiny --workdir=/tmp/demo           (tests: a few minutes)

Each stage's config is the stage's own config file with demo-sized overrides, so any field can be
changed from the command line, e.g. `--config.pretrain.train.steps=2000`. Dataset paths,
generator and adapter directories are filled in by the demo from the stages' workdirs.
"""

import ml_collections

from busgen_jax.core import config_files
from busgen_jax.data import builtin, phantom

PRESETS = ("default", "tiny")
TASK_NEGATIVE, TASK_POSITIVE = ("benign",), ("dcis",)  # early diagnosis: benign vs DCIS


def _model(config: ml_collections.ConfigDict, size: int, channels: int) -> None:
    config.model.update(
        image_size=size,
        base_channels=channels,
        num_devices=len(phantom.PHANTOM_DEVICES),
    )
    config.data.update(
        image_size=size,
        device_names=tuple(phantom.PHANTOM_DEVICES),
        balance_classes=True,
    )


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    config_files.check_preset(preset, PRESETS)
    tiny = preset == "tiny"
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.phantom = config_files.load("configs/phantom.py:demo")
    config.phantom.update(num_images=160 if tiny else 5000, image_size=32 if tiny else 64)
    if not tiny:
        # Training split 2,100 images, as with the 3,000 of earlier demos (70/15/15), but
        # validation and test splits large enough to compare classifiers: with 65 DCIS and 185
        # benign test cases, the same classifiers scored 0.12-0.22 AUC apart on validation and
        # test (DeLong standard errors ~0.04). About 2,000 test images give ~300 DCIS and ~800
        # benign cases; 900 validation images choose the guidance weight and thresholds.
        config.phantom.split_fractions = (0.42, 0.18, 0.40)

    # The default demo adapts the shipped phantom foundation model, as BUSGen users adapt its
    # released weights; pretraining a small model from scratch on the demo's data stays one
    # switch away (the tiny preset does it, to test that path in minutes).
    config.pretrain_from_scratch = tiny
    config.pretrain = config_files.load("configs/pretrain.py:tiny")
    # Filled in from the demo's own data at run time: empty here, so that the job command does
    # not build the stage configs' built-in default datasets for nothing.
    config.pretrain.data.paths = ()
    # 16 base channels: on a 2-core CPU a step at 32 channels costs ~5x more (BENCHMARKS.md).
    _model(config.pretrain, size=32, channels=16)
    config.pretrain.model.update(channel_mults=(1, 2) if tiny else (1, 2, 2))
    config.pretrain.model.attention_levels = (1,) if tiny else (2,)
    config.pretrain.data.batch_size = 8 if tiny else 16
    config.pretrain.train.update(
        steps=6 if tiny else 450,
        learning_rate=1e-3,
        warmup_steps=0 if tiny else 30,
        ema_decay=0.5 if tiny else 0.99,
    )
    config.pretrain.checkpoint.update(every_steps=3 if tiny else 150)
    config.pretrain.log_every_steps = 3 if tiny else 50
    config.pretrain.sample.update(
        every_steps=6 if tiny else 450, per_class=4, steps=4 if tiny else 20
    )

    config.adapt = config_files.load(
        "configs/adapt.py:tiny" if tiny else "configs/adapt.py:default"
    )
    config.adapt.data.class_names = TASK_NEGATIVE + TASK_POSITIVE
    config.adapt.shots = 4 if tiny else 8
    if not tiny:
        config.adapt.train.update(steps=150, learning_rate=1e-3, warmup_steps=10)
        config.adapt.lora.update(rank=4, alpha=4.0)
        config.adapt.checkpoint.every_steps = 75
        config.adapt.sample.steps = 20

    # The default preset samples as the generator's spec says (the foundation's measured choice).
    config.synthesize = config_files.load(
        "configs/synthesize.py:tiny" if tiny else "configs/synthesize.py:default"
    )
    config.synthesize.classes = {name: 1.0 for name in TASK_NEGATIVE + TASK_POSITIVE}
    config.synthesize.audit.train_paths = ()  # the adapter's few-shot images, at run time
    if tiny:
        config.synthesize.steps = 6  # the tiny demo's few-step generator gives noise anyway
    else:
        config.synthesize.update(num_images=512, batch_size=64, records_per_shard=128)
        # Eight examples per class over four devices leave one or two training images per
        # (class, device) condition: a shard whose draws test as copying tightens its thresholds
        # and some draws need more than five tries to clear them (measured: guidance 1.8 was
        # refused at five). Every kept draw is still below the thresholds.
        config.synthesize.audit.max_rounds = 10

    # Over-generation with a label filter (busgen_jax/synthesis/label_filter.py): the seed-0
    # classifier of this source, trained before synthesis, redraws candidates it does not assign
    # to their requested class. '' is off; 'fewshot' uses only the adapter's k-shot images (fair
    # to the few-shot regime); 'real' the whole real training split (the full regime's data).
    # The few-shot filter is the default: on the same adapter it raised the DCIS images the
    # oracle calls DCIS from 57% to 69% and cut the Fréchet distance from 7.1x to 5.0x the floor
    # (BENCHMARKS.md, "Demo synthesis variants").
    config.label_filter_source = "fewshot"
    # Guidance chosen by validation AUC: per weight, `num_images` synthetic images train a
    # classifier scored on the real validation split; synthesis uses the best. Empty: the
    # synthesis config's weight. Off by default: with the few-shot filter it took 13 minutes
    # (sharing the 2 cores with another job) and chose 3.0 (validation AUC 0.582 against 0.563
    # and 0.564 for 1.0 and 1.8), the weight the default synthesizes with below.
    config.guidance_search = ml_collections.ConfigDict(
        {"weights": (1.0, 3.0) if tiny else (), "num_images": 32 if tiny else 256}
    )
    if not tiny:
        config.synthesize.guidance_weight = 3.0

    config.classifier = config_files.load(
        "configs/classifier.py:tiny" if tiny else "configs/classifier.py:default"
    )
    config.classifier.task.update(negative=TASK_NEGATIVE, positive=TASK_POSITIVE)
    config.classifier.model.image_size = 32
    config.classifier.data.image_size = 32
    if not tiny:
        config.classifier.train.update(steps=200, warmup_steps=20)
    # Which training data each classifier sees: the whole real training split ('real', the full
    # regime), only the adapter's k-shot images ('fewshot', the few-shot regime), synthetic
    # images, or real and synthetic together.
    config.classifier_sources = ("real", "fewshot", "synthetic", "mixed")
    # Every source's classifier is trained once per seed (initialization, data order,
    # augmentation); the report gives the mean and spread, and the gates compare the means.
    config.classifier_seeds = (0,) if tiny else (0, 1, 2)
    config.mixed_weights = (0.5, 0.5)

    config.evaluate = config_files.load("configs/evaluate.py:phantom")
    if tiny:
        config.evaluate.reader_study.n_readers = 4
    config.evaluate.bootstrap.n_boot = 200 if tiny else 1000

    config.fidelity_segmenter_steps = 60 if tiny else 200
    # The judge of the quality gates (busgen_jax.evaluation.oracle): an exported classifier
    # (empty: the shipped phantom oracle) and the real phantom it is scored against, a set none of
    # the demo's models saw (empty: the demo's own data, too small for more than a smoke test).
    config.oracle = ml_collections.ConfigDict(
        {
            "classifier": "",
            "reference": "" if tiny else builtin.phantom_path("benign_dcis"),
            "max_per_class": 8 if tiny else 128,
        }
    )
    config.scaling = config_files.load(
        "configs/scaling.py:tiny" if tiny else "configs/scaling.py:default"
    )
    # The scaling classifiers are the demo's classifier (task, size), trained for fewer steps.
    scaling_classifier = config.classifier.copy_and_resolve_references()
    scaling_classifier.train.steps = 10 if tiny else 100
    scaling_classifier.checkpoint.every_steps = scaling_classifier.train.steps
    config.scaling.classifier = scaling_classifier
    if not tiny:
        # 16 is the adapter's few-shot set (8 + 8): synthetic data from half of it up to 8x it.
        config.scaling.sizes = (8, 16, 32, 64, 128)
    return config
