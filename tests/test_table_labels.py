"""Extra CSV columns: kept only when listed, and never when they look identifying."""

import json

import fake_trees
import pytest

from busgen_jax.data import shards
from busgen_jax.data.importers import DatasetImportError, import_dataset
from busgen_jax.jobs import import_data
from busgen_jax.privacy import identifiers

SALT = "test-salt"


def _table(tmp_path, extra: dict[str, list[str]]):
    for k in range(3):
        fake_trees.write_png(tmp_path / f"{k}.png", fake_trees.gray_image(k))
    rows = [
        [f"{k}.png", "benign" if k else "malignant", *(v[k] for v in extra.values())]
        for k in range(3)
    ]
    fake_trees.write_csv(tmp_path / "t.csv", ["image_path", "pathology", *extra], rows)
    return tmp_path / "t.csv"


def _refused(tmp_path, csv, *fragments, **options):
    out = tmp_path / "out"
    with pytest.raises(DatasetImportError) as info:
        import_dataset("table", csv, out, salt=SALT, **options)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert not out.exists()
    return message


def test_unlisted_columns_are_refused_in_one_line_listing_them(tmp_path):
    csv = _table(tmp_path, {"age": ["61", "45", "50"], "patient_name": ["A B", "C D", "E F"]})
    _refused(tmp_path, csv, "columns ['age', 'patient_name']", "config.label_columns")
    _refused(tmp_path, csv, "columns ['patient_name']", label_columns=("age",))


IDENTIFYING = {
    "a person's name": ["Jane Doe", "Smith, John", "DOE^JANE"],
    "a date": ["1987-04-12", "12/04/1987", "19870412"],
    "an identifier": ["ACC0012345", "MRN-88231", "4410023"],
    "a phone number": ["+44 20 7946 0958", "(555) 123-4567", "555 123 4567"],
    "a street address": ["221B Baker Street", "12 Rue de Rivoli", "4 Elm Rd"],
}


@pytest.mark.parametrize("kind", list(IDENTIFYING))
def test_identifying_values_are_refused_even_when_listed(tmp_path, kind):
    values = IDENTIFYING[kind]
    csv = _table(tmp_path, {"note": ["left", "right", values[0]]})
    message = _refused(tmp_path, csv, "t.csv line 4", "'note'", kind, label_columns=("note",))
    assert values[0] not in message  # the error never repeats the value
    for value in values:
        assert identifiers.identifying_kind(value) == kind, value


@pytest.mark.parametrize("column", ["patient_name", "birth_date", "accession", "phone", "mrn"])
def test_identifier_columns_are_refused_by_name(tmp_path, column):
    csv = _table(tmp_path, {column: ["a", "b", "c"]})
    _refused(tmp_path, csv, f"{column!r} is named like an identifier", label_columns=(column,))


def test_listed_clean_and_deidentified_columns_are_kept(tmp_path):
    csv = _table(
        tmp_path,
        {
            "age": ["61", "45.5", ""],
            "histology": ["Fibroadenoma", "invasive ductal carcinoma", "T1N0M0"],
            "study_date": ["2020-01-01", "2020-01-02", "2020-01-03"],
        },
    )
    out = tmp_path / "out"
    import_dataset(
        "table",
        csv,
        out,
        salt=SALT,
        label_columns=("Age", "histology"),
        deidentified_columns=("study_date",),
    )
    labels = sorted((r["labels"] for r in shards.read_records(out)), key=json.dumps)
    assert {"age": 61, "histology": "Fibroadenoma", "study_date": "2020-01-01"} in labels
    assert {"histology": "T1N0M0", "study_date": "2020-01-03"} in labels


def test_clean_label_values_pass_the_check():
    for value in ["61", "45.5", "irregular", "BI-RADS 4A", "ER+/PR+", "12 mm", "Left breast"]:
        assert identifiers.identifying_kind(value) is None, value


def test_the_import_job_reports_it_as_one_error_line(tmp_path, capsys):
    csv = _table(tmp_path, {"birth_date": ["1960-01-01", "1970-02-02", "1980-03-03"]})
    with pytest.raises(SystemExit) as exit_info:
        import_data.main(
            [
                "busgen import",
                "--config=configs/import_data.py:table",
                f"--workdir={tmp_path / 'run'}",
                f"--config.source={csv}",
                "--config.salt=s",
                "--config.label_columns=('birth_date',)",
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "birth_date" in err
    assert "1960" not in err and not (tmp_path / "run" / "data").exists()
