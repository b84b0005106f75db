"""Import of real data (BUSI, BUS-BRA, UDIAT dataset B, a CSV table, DICOM through the table).

    BUSGEN_SALT=<secret> busgen import --config=configs/import_data.py:busi --workdir=DIR \
        --config.source=/data/Dataset_BUSI_with_GT

Writes DIR/data/<name>/. The salt keys the pseudonyms of case and patient ids; it is read from
$BUSGEN_SALT when `salt` is empty and is never stored. Presets name the layout.
"""

import ml_collections

from busgen_jax.core import config_files

LAYOUTS = ("busi", "busbra", "udiat", "table")


def get_config(layout: str = "busi") -> ml_collections.ConfigDict:
    config_files.check_preset(layout, LAYOUTS)
    config = ml_collections.ConfigDict()
    config.layout = layout
    config.source = ""  # dataset folder, or the CSV file for 'table'
    config.name = layout
    config.salt = ""
    config.seed = 0
    config.split_fractions = (0.7, 0.15, 0.15)
    config.device = ""  # overrides the device the source gives
    # Folders besides the source that its files (CSV paths, symlinks) may lie in; any other file
    # outside the source is refused.
    config.allowed_roots = ()
    # One image under two names (equal pixels): "refuse" the import, or "keep_first" and report.
    config.duplicates = "refuse"
    # 'table' only: extra CSV columns to keep as record labels (any other extra column is
    # refused). Their names and values are checked for identifiers (names, dates, record
    # numbers, phone numbers, addresses); columns in `deidentified_columns` are kept unchecked.
    config.label_columns = ()
    config.deidentified_columns = ()
    return config
