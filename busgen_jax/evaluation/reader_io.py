"""Reader-study files in the formats published studies come in, all read into one
`reader_study.ReaderStudy`:

* "long": a long table, one read per row: `case_id, reader_id, [modality,] rating|birads
  [, truth]` (MRMCaov's `case, reader, treatment, truth, rating` names work too);
* "imrmc": iMRMC's input (`readerID, caseID, modalityID, score` rows after an optional header
  ending `BEGIN DATA:`; truth rows have readerID -1 or "truth" and score 0/1);
* "rjafroc": RJafroc's ROC workbook (.xlsx), or its sheets saved as CSV files in a folder:
  `TRUTH` (CaseID, LesionID: 0 non-diseased, 1 diseased), `FP` or `NL` (ReaderID, ModalityID,
  CaseID, rating) for non-diseased cases and `TP` or `LL` (ReaderID, ModalityID, CaseID,
  LesionID, rating) for diseased ones.

The rating scale (BI-RADS or numbers, and their direction) comes from a `RatingScale`. Missing
reads are allowed (split-plot and unbalanced designs); errors name the file, line and field.
"""

from __future__ import annotations

import csv
import os
import pathlib
import re
import zipfile
from collections.abc import Iterable, Mapping
from typing import Any
from xml.etree import ElementTree

import numpy as np

from busgen_jax.evaluation.reader_study import BIRADS, DEFAULT_MODALITY, RatingScale, ReaderStudy

FORMATS = ("long", "imrmc", "rjafroc")
_ALIASES = {
    "case_id": ("case_id", "case", "caseid"),
    "reader_id": ("reader_id", "reader", "readerid"),
    "modality": ("modality", "treatment", "modalityid", "test"),
    "truth": ("truth",),
}
Read = tuple[str, str, str, Any, str]  # case, reader, modality, raw rating, where


def _truth_value(value: Any, where: str) -> int:
    text = str(value).strip()
    if text not in ("0", "1", "0.0", "1.0"):
        raise ValueError(f"{where}: truth {value!r} is not 0 or 1")
    return int(float(text))


def _build(
    source: str,
    reads: Iterable[Read],
    truth: Mapping[str, int],
    scale: RatingScale,
    simulated: bool = False,
) -> ReaderStudy:
    """A study from (case, reader, modality, rating, where) reads; cases in first-read order."""
    order: dict[str, dict[str, None]] = {"case": {}, "reader": {}, "modality": {}}
    scores: dict[tuple[str, str, str], tuple[float, str]] = {}
    for case, reader, modality, rating, where in reads:
        if case not in truth:
            raise ValueError(f"{where}: case {case!r} has no ground truth")
        key = (case, reader, modality)
        if key in scores:
            raise ValueError(
                f"{where}: duplicate read of case {case!r} by reader {reader!r} in modality "
                f"{modality!r} (first at {scores[key][1]})"
            )
        scores[key] = (scale.score(rating, f"{where}: field 'rating'"), where)
        for name, value in zip(("case", "reader", "modality"), key, strict=True):
            order[name][value] = None
    if not scores:
        raise ValueError(f"{source}: no reads")
    cases, readers, modalities = (tuple(order[name]) for name in ("case", "reader", "modality"))
    array = np.full((len(modalities), len(readers), len(cases)), np.nan)
    index = {name: {v: i for i, v in enumerate(order[name])} for name in order}
    for (case, reader, modality), (score, _) in scores.items():
        array[index["modality"][modality], index["reader"][reader], index["case"][case]] = score
    for m, r in zip(*np.nonzero(~np.isfinite(array).any(axis=2)), strict=True):
        raise ValueError(
            f"{source}: reader {readers[r]!r} has no reads in modality {modalities[m]!r} "
            "(every reader must read in every modality; cases may differ)"
        )
    labels = np.array([truth[case] for case in cases])
    for case, label in zip(cases, labels, strict=True):
        if label not in (0, 1):
            raise ValueError(f"truth for case {case!r} is {label!r}, not 0 or 1")
    return ReaderStudy(cases, readers, modalities, array, labels.astype(np.int64), simulated, scale)


def _column(fields: list[str], name: str, path: Any, required: bool = True) -> str | None:
    lowered = {field.strip().lower(): field for field in fields}
    for alias in _ALIASES.get(name, (name,)):
        if alias in lowered:
            return lowered[alias]
    if required:
        raise ValueError(f"{path}: missing column {name!r} (or one of {_ALIASES.get(name)})")
    return None


def load_long_table(
    path: str | os.PathLike,
    truth: Mapping[str, int] | None = None,
    scale: RatingScale = BIRADS,
) -> ReaderStudy:
    """A long table of reads; `truth` maps case_id -> 0/1, or the file has a `truth` column
    (both: they must agree). The rating column is `birads` or `rating`."""
    with open(path, newline="") as handle:
        table = csv.DictReader(handle)
        fields = list(table.fieldnames or ())
        case_col, reader_col = _column(fields, "case_id", path), _column(fields, "reader_id", path)
        modality_col = _column(fields, "modality", path, required=False)
        truth_col = _column(fields, "truth", path, required=truth is None)
        rating_col = _column(fields, "birads", path, False) or _column(fields, "rating", path)
        simulated, reads, file_truth = [], [], {}
        for row in table:
            where = f"{path}:{table.line_num}"
            case = row[case_col].strip()
            if truth_col is not None:
                label = _truth_value(row[truth_col], f"{where}: field 'truth'")
                if file_truth.setdefault(case, label) != label:
                    raise ValueError(
                        f"{where}: case {case!r} has truth {label} and {file_truth[case]}"
                    )
                if truth is not None and case in truth and truth[case] != label:
                    raise ValueError(
                        f"{where}: case {case!r} has truth {label} here and {truth[case]} given"
                    )
            modality = (row[modality_col] if modality_col else "") or DEFAULT_MODALITY
            reads.append((case, row[reader_col].strip(), modality.strip(), row[rating_col], where))
            simulated.append(str(row.get("simulated", "")).strip().lower() == "true")
    merged = dict(file_truth) | dict(truth or {})
    return _build(str(path), reads, merged, scale, bool(simulated) and all(simulated))


def load_imrmc(path: str | os.PathLike, scale: RatingScale | None = None) -> ReaderStudy:
    """An iMRMC input file (numeric scores, higher = more suspicious unless `scale` says)."""
    scale = scale or RatingScale("numeric")
    lines = pathlib.Path(path).read_text().splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if line.strip() == "BEGIN DATA:"), 0)
    truth: dict[str, int] = {}
    reads = []
    for number, line in enumerate(lines[start:], start=start + 1):
        fields = [field.strip() for field in line.split(",")]
        if not line.strip() or (number == start + 1 and fields[0].lower() == "readerid"):
            continue
        where = f"{path}:{number}"
        if len(fields) != 4:
            raise ValueError(f"{where}: expected readerID,caseID,modalityID,score, got {line!r}")
        reader, case, modality, score = fields
        if reader in ("-1", "truth"):
            truth[case] = _truth_value(score, f"{where}: truth score")
        else:
            reads.append((case, reader, modality, score, where))
    return _build(str(path), reads, truth, scale)


_XLSX = {
    "main": "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}",
    "rel": "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}",
    "pkg": "{http://schemas.openxmlformats.org/package/2006/relationships}",
}


def _xlsx_sheets(path: pathlib.Path) -> dict[str, list[list[str]]]:
    """Every sheet of an .xlsx workbook as rows of cell texts (the OOXML parts a spreadsheet
    program writes: workbook, its relationships, shared strings and worksheets)."""
    m, rel = _XLSX["main"], _XLSX["rel"]
    try:
        book = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path}: not an .xlsx workbook ({e})") from e
    with book:
        names = set(book.namelist())
        strings = []
        if "xl/sharedStrings.xml" in names:
            root = ElementTree.fromstring(book.read("xl/sharedStrings.xml"))
            strings = ["".join(t.text or "" for t in si.iter(f"{m}t")) for si in root]
        links = ElementTree.fromstring(book.read("xl/_rels/workbook.xml.rels"))
        targets = {r.get("Id"): r.get("Target") for r in links.iter(f"{_XLSX['pkg']}Relationship")}
        sheets = {}
        for sheet in ElementTree.fromstring(book.read("xl/workbook.xml")).iter(f"{m}sheet"):
            target = targets[sheet.get(f"{rel}id")].lstrip("/")
            part = target if target.startswith("xl/") else f"xl/{target}"
            rows = []
            for row in ElementTree.fromstring(book.read(part)).iter(f"{m}row"):
                cells = {}
                for cell in row.iter(f"{m}c"):
                    column = re.match(r"[A-Z]+", cell.get("r", "A")).group()
                    index = 0
                    for letter in column:
                        index = 26 * index + ord(letter) - 64
                    kind, value = cell.get("t"), cell.find(f"{m}v")
                    if kind == "inlineStr":
                        text = "".join(t.text or "" for t in cell.iter(f"{m}t"))
                    elif kind == "s" and value is not None:
                        text = strings[int(value.text)]
                    else:
                        text = value.text if value is not None and value.text else ""
                    cells[index - 1] = text
                if cells:
                    rows.append([cells.get(i, "") for i in range(max(cells) + 1)])
            sheets[sheet.get("name", "").strip().upper()] = rows
    return sheets


def _number_text(value: str) -> str:
    """Excel stores IDs as numbers ("3.0" or "3"): the text a CSV export would show."""
    try:
        number = float(value)
    except ValueError:
        return value.strip()
    return f"{number:g}" if number.is_integer() else value.strip()


def _rjafroc_sheets(source: pathlib.Path) -> dict[str, tuple[str, list[dict[str, str]]]]:
    """Sheet name -> (where, rows as {lower-case column: text}) of a workbook or CSV folder."""
    if source.is_dir():
        sheets = {}
        for path in sorted(source.glob("*.csv")):
            with open(path, newline="") as handle:
                rows = [
                    {k.strip().lower(): v for k, v in r.items()} for r in csv.DictReader(handle)
                ]
            sheets[path.stem.upper()] = (str(path), rows)
        return sheets
    sheets = {}
    for name, rows in _xlsx_sheets(source).items():
        header = [h.strip().lower() for h in rows[0]] if rows else []
        records = [
            dict(zip(header, (_number_text(v) for v in row), strict=False)) for row in rows[1:]
        ]
        sheets[name] = (f"{source} sheet {name}", records)
    return sheets


def _sheet(sheets, source, *names: str) -> tuple[str, list[dict[str, str]]]:
    for name in names:
        if name in sheets:
            return sheets[name]
    raise ValueError(f"{source}: no {' or '.join(names)} sheet")


def load_rjafroc(source: str | os.PathLike, scale: RatingScale | None = None) -> ReaderStudy:
    """RJafroc's ROC layout: an .xlsx workbook or a folder of its TRUTH, FP (NL) and TP (LL)
    sheets saved as CSV."""
    scale = scale or RatingScale("numeric")
    source = pathlib.Path(source)
    if not source.is_dir() and source.suffix.lower() != ".xlsx":
        raise ValueError(
            f"{source}: an RJafroc study is an .xlsx workbook or a folder of CSV sheets"
        )
    sheets = _rjafroc_sheets(source)
    truth_where, truth_rows = _sheet(sheets, source, "TRUTH")
    truth = {}
    for line, row in enumerate(truth_rows, start=2):
        lesion = row.get("lesionid", "").strip()
        if lesion not in ("0", "1"):
            raise ValueError(f"{truth_where}:{line}: LesionID {lesion!r} is not 0 or 1 (ROC data)")
        truth[row["caseid"].strip()] = int(lesion)
    reads = []
    for names in (("FP", "NL"), ("TP", "LL")):
        where, rows = _sheet(sheets, source, *names)
        for line, row in enumerate(rows, start=2):
            rating = next((v for k, v in row.items() if k.endswith("_rating")), None)
            if rating is None or "readerid" not in row or "caseid" not in row:
                raise ValueError(
                    f"{where}: needs ReaderID, ModalityID, CaseID and a *_Rating column"
                )
            case = row["caseid"].strip()
            reads.append(
                (
                    case,
                    row["readerid"].strip(),
                    row.get("modalityid", "1").strip(),
                    rating,
                    f"{where}:{line}",
                )
            )
    return _build(str(source), reads, truth, scale)


def load(
    path: str | os.PathLike,
    fmt: str = "long",
    truth: Mapping[str, int] | None = None,
    scale: RatingScale | None = None,
) -> ReaderStudy:
    """A study in format `fmt` (see the module docstring); `truth` is for the long table, and
    must agree with the truth the iMRMC and RJafroc files carry. `scale` defaults to BI-RADS
    for the long table and to numbers, higher = more suspicious, for the others."""
    if fmt not in FORMATS:
        raise ValueError(f"reader-study format {fmt!r} is not one of {FORMATS}")
    if not os.path.exists(path):
        raise ValueError(f"{path}: reader-study file does not exist")
    if fmt == "long":
        return load_long_table(path, truth, scale or BIRADS)
    study = (load_imrmc if fmt == "imrmc" else load_rjafroc)(path, scale)
    for case, label in zip(study.case_ids, study.truth, strict=True):
        if truth is not None and case in truth and truth[case] != label:
            raise ValueError(
                f"{path}: case {case!r} has truth {label} here and {truth[case]} given"
            )
    return study


def rating_scale_of(config: Any) -> RatingScale:
    """The scale a config declares in its `rating_scale`, `higher_is_malignant` and `threshold`
    fields ("" threshold: the scale's default)."""
    return RatingScale(
        config.rating_scale, bool(config.higher_is_malignant), config.threshold or None
    )
