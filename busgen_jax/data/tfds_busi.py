"""TFDS builder for BUSI-layout data, producing the same records as `read_busi`.

BUSI cannot be downloaded automatically; point TFDS at a local copy:

    builder = BusgenBusi(data_dir="~/tensorflow_datasets", file_format="array_record",
                         salt=SECRET, seed=0)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir="/data/Dataset_BUSI_with_GT"))
    source = builder.as_data_source(split="train")    # or tfds.data_source("busgen_busi", ...)

Fields match the schema of `busgen_jax.data.schema`: image and mask as HxWx1 uint8 (mask
{0, 255}), boxes as normalized [x1, y1, x2, y2] float32 rows (xyxy order, not TFDS's BBoxFeature
yxyx), pathology as a ClassLabel over `schema.PATHOLOGIES`, and the device, pseudonymous case and
patient ids and split as text. The train/val/test splits are the importer's patient-level splits;
a split with no image is left out. Salt and seed are construction arguments (not stored in the
dataset info), needed only to generate; reading a prepared dataset needs neither.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from busgen_jax.data import schema
from busgen_jax.data.importers.busi import read_busi
from busgen_jax.data.importers.records import DEFAULT_SPLIT_FRACTIONS


def tfds_example(record: dict[str, Any]) -> dict[str, Any]:
    """A schema record as a `BusgenBusi` example (decoded arrays, boxes as [n, 4] float32)."""
    return {
        "image": schema.decode_png(record["image"])[..., None],
        "mask": schema.decode_png(record["mask"])[..., None],
        "boxes": np.asarray(record["boxes"], np.float32).reshape(-1, 4),
        "pathology": record["pathology"],
        "device": record["device"],
        "case_id": record["case_id"],
        "patient_id": record["patient_id"],
        "split": record["split"],
    }


class BusgenBusi(tfds.core.GeneratorBasedBuilder):
    """BUSI breast ultrasound images with lesion masks, boxes and pseudonymous ids."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download BUSI (Al-Dhabyani et al., Data in Brief 2020) and pass the folder "
        "Dataset_BUSI_with_GT (or its parent) as manual_dir."
    )

    # TFDS derives this path through `importlib_resources`, which it does not install on
    # Python >= 3.9 (tensorflow/datasets#11212); this gives the same answer without it.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    def __init__(
        self,
        *,
        salt: str | None = None,
        seed: int = 0,
        split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
        device: str | None = None,
        **kwargs: Any,
    ):
        self._import_args = {"seed": seed, "split_fractions": split_fractions, "device": device}
        self._salt = salt
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
                    "mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
                    "boxes": tfds.features.Sequence(
                        tfds.features.Tensor(shape=(4,), dtype=np.float32)
                    ),
                    "pathology": tfds.features.ClassLabel(names=list(schema.PATHOLOGIES)),
                    "device": tfds.features.Text(),
                    "case_id": tfds.features.Text(),
                    "patient_id": tfds.features.Text(),
                    "split": tfds.features.Text(),
                }
            ),
            homepage="https://doi.org/10.1016/j.dib.2019.104863",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        if not self._salt:
            raise ValueError("BusgenBusi: pass salt=... to generate the dataset (pseudonyms)")
        records = read_busi(dl_manager.manual_dir, salt=self._salt, **self._import_args)
        return {
            split: self._generate_examples([r for r in records if r["split"] == split])
            for split in schema.SPLITS
            if any(r["split"] == split for r in records)
        }

    def _generate_examples(self, records: list[dict[str, Any]]) -> Iterator[tuple[str, dict]]:
        for record in records:
            yield record["case_id"], tfds_example(record)
