"""ArrayRecord shards plus a manifest: the on-disk form of every dataset in the project.

A dataset directory holds `{name}-{split}-{i:05d}-of-{n:05d}.array_record` shards and one
`manifest.json`. Shards are written under a temporary name and renamed when complete, and the
manifest is written last (also atomically), so a reader that finds a manifest finds every shard
it names, complete. The manifest carries no timestamps: the same records give the same bytes.
What a killed writer leaves behind (a hidden staging folder, a half-written shard) is removed by
the next writer of that directory, which the job's workdir lock makes the only one.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import pathlib
import shutil
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from busgen_jax.data import schema

MANIFEST = "manifest.json"
# group_size:1 keeps every record individually addressable, which grain's random access needs.
_WRITER_OPTIONS = "group_size:1"


class DatasetError(ValueError):
    """A dataset on disk is missing, incomplete or inconsistent; the message names the file."""


def file_sha256(path: pathlib.Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` so that readers see the old file or the new one, never a part."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    tmp.write_text(text)
    os.replace(tmp, path)


_STAGING_PREFIX = ".staging-"
_TMP_MARK = ".tmp-"


def remove_stale_staging(directory: str | os.PathLike) -> list[str]:
    """Deletes the staging folders and half-written files a killed writer left in `directory`;
    returns their names. Only for a directory this process alone writes."""
    directory = pathlib.Path(directory)
    stale = [
        p
        for p in (directory.iterdir() if directory.is_dir() else [])
        if p.name.startswith(_STAGING_PREFIX) or (p.name.startswith(".") and _TMP_MARK in p.name)
    ]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return sorted(p.name for p in stale)


def write_shard(payloads: Iterable[bytes], path: str | os.PathLike) -> dict[str, Any]:
    """Writes serialized records to one ArrayRecord file atomically; returns its shard entry.

    Raises:
      DatasetError: the file cannot be written (disk full, no permission), naming it.
    """
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{uuid.uuid4().hex}")
    count = 0
    try:
        writer = ArrayRecordWriter(str(tmp), _WRITER_OPTIONS)
        try:
            for payload in payloads:
                writer.write(payload)
                count += 1
        finally:
            writer.close()
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        # array_record reports I/O failures as RuntimeError("write() failed: <reason>; ...").
        if isinstance(error, OSError | RuntimeError) and not isinstance(error, DatasetError):
            reason = error.strerror if isinstance(error, OSError) else str(error).split(";")[0]
            raise DatasetError(f"{path}: cannot write shard ({reason})") from error
        raise
    return {"file": path.name, "num_records": count, "sha256": file_sha256(path)}


def _summary(records_meta: list[dict[str, str]]) -> dict[str, Any]:
    by_pathology = collections.Counter(m["pathology"] for m in records_meta)
    by_device = collections.Counter(m["device"] for m in records_meta)
    by_pair = collections.Counter(f"{m['pathology']}/{m['device']}" for m in records_meta)
    return {
        "num_records": len(records_meta),
        "pathology": dict(sorted(by_pathology.items())),
        "device": dict(sorted(by_device.items())),
        "pathology_by_device": dict(sorted(by_pair.items())),
    }


def _iter_validated(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    seen_cases: dict[str, int] = {}
    for index, record in enumerate(records):
        where = f"record {index} (case {record.get('case_id')!r})"
        schema.validate(record, where=where)
        case_id = record["case_id"]
        if case_id in seen_cases:
            raise schema.SchemaError(
                f"{where}: duplicate case_id, already used by record {seen_cases[case_id]}"
            )
        seen_cases[case_id] = index
        yield record


def write_dataset(
    records: Iterable[dict[str, Any]],
    out_dir: str | os.PathLike,
    *,
    name: str,
    records_per_shard: int = 1024,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Validates and writes records as per-split ArrayRecord shards plus `manifest.json`.

    Everything is staged in a hidden directory inside `out_dir` and moved into place only after
    the last record was written, so a failure (bad record, duplicate id, interruption) leaves
    `out_dir` without any new shard or manifest.

    Args:
      records: schema records (see `busgen_jax.data.schema`), in the order to store them.
      out_dir: destination directory (created if missing; must not already hold a manifest).
      name: dataset name used in shard file names.
      records_per_shard: maximum records per shard.
      extra: JSON-serializable metadata stored in the manifest (e.g. importer settings).

    Returns:
      The manifest dict.
    """
    if records_per_shard < 1:
        raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / MANIFEST).exists():
        raise DatasetError(
            f"{out_dir / MANIFEST}: a dataset already exists here; use a new directory"
        )
    stale = remove_stale_staging(out_dir)
    if stale:
        logging.warning("%s: removed %s left by an interrupted writer", out_dir, ", ".join(stale))
    staging = out_dir / f"{_STAGING_PREFIX}{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        manifest = _write_staged(_iter_validated(records), staging, name, records_per_shard)
        manifest["extra"] = dict(extra or {})
        for split_info in manifest["splits"].values():
            for shard in split_info["shards"]:
                os.replace(staging / shard["staged_file"], out_dir / shard["file"])
                del shard["staged_file"]
        atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _write_staged(
    records: Iterator[dict[str, Any]], staging: pathlib.Path, name: str, records_per_shard: int
) -> dict[str, Any]:
    pending: dict[str, list[bytes]] = collections.defaultdict(list)
    meta: dict[str, list[dict[str, str]]] = collections.defaultdict(list)
    shards: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)

    def flush(split: str) -> None:
        staged_name = f"{split}-{len(shards[split]):05d}"
        entry = write_shard(pending[split], staging / staged_name)
        entry["staged_file"] = staged_name
        shards[split].append(entry)
        pending[split] = []

    for record in records:
        split = record["split"]
        pending[split].append(schema.serialize(record))
        meta[split].append({"pathology": record["pathology"], "device": record["device"]})
        if len(pending[split]) == records_per_shard:
            flush(split)
    for split in list(pending):
        if pending[split]:
            flush(split)
    if not meta:
        raise DatasetError(f"no records to write for dataset '{name}' (empty dataset)")

    for split in sorted(shards):
        total = len(shards[split])
        for i, shard in enumerate(shards[split]):
            shard["file"] = f"{name}-{split}-{i:05d}-of-{total:05d}.array_record"
    return build_manifest(name, shards, meta)


def build_manifest(
    name: str,
    split_shards: dict[str, list[dict[str, Any]]],
    split_meta: dict[str, list[dict[str, str]]],
) -> dict[str, Any]:
    """The manifest of shards already written, given each split's records' pathology and device.

    Args:
      name: dataset name.
      split_shards: per split, shard entries as returned by `write_shard`, in reading order.
      split_meta: per split, one {'pathology', 'device'} dict per record, in reading order.
    """
    splits = {}
    for split in sorted(split_meta):
        splits[split] = {
            **_summary(split_meta[split]),
            "shards": split_shards[split],
            # Per-record labels let readers balance classes without decoding images.
            "record_pathology": [m["pathology"] for m in split_meta[split]],
            "record_device": [m["device"] for m in split_meta[split]],
        }
    all_meta = [m for split in sorted(split_meta) for m in split_meta[split]]
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "name": name,
        **_summary(all_meta),
        "splits": splits,
    }


def read_manifest(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """Reads a dataset's manifest, with an error naming the directory if there is none."""
    path = pathlib.Path(dataset_dir) / MANIFEST
    if not path.exists():
        raise DatasetError(
            f"{path}: no manifest (not a dataset directory, or writing never finished)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: manifest is not valid JSON ({e})") from e
    if manifest.get("schema_version") != schema.SCHEMA_VERSION:
        raise DatasetError(
            f"{path}: schema_version {manifest.get('schema_version')} is not "
            f"{schema.SCHEMA_VERSION}"
        )
    return manifest


def shard_paths(dataset_dir: str | os.PathLike, split: str) -> list[str]:
    """Paths of the shards of one split, checked to exist."""
    dataset_dir = pathlib.Path(dataset_dir)
    manifest = read_manifest(dataset_dir)
    if split not in manifest["splits"]:
        return []
    paths = []
    for shard in manifest["splits"][split]["shards"]:
        path = dataset_dir / shard["file"]
        if not path.exists():
            raise DatasetError(f"{path}: shard named in the manifest is missing")
        paths.append(str(path))
    return paths


def verify_dataset(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """Checks every shard's checksum and record count against the manifest."""
    dataset_dir = pathlib.Path(dataset_dir)
    manifest = read_manifest(dataset_dir)
    for split, info in manifest["splits"].items():
        for shard, path in zip(info["shards"], shard_paths(dataset_dir, split), strict=True):
            if file_sha256(pathlib.Path(path)) != shard["sha256"]:
                raise DatasetError(f"{path}: checksum does not match the manifest")
            reader = ArrayRecordReader(path)
            count = reader.num_records()
            reader.close()
            if count != shard["num_records"]:
                raise DatasetError(f"{path}: {count} records, manifest says {shard['num_records']}")
    return manifest


def read_shard(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Yields the decoded records of one shard file in storage order."""
    reader = ArrayRecordReader(str(path))
    try:
        for payload in reader.read_all():
            yield schema.deserialize(payload)
    finally:
        reader.close()


def read_records(
    dataset_dir: str | os.PathLike, split: str | None = None
) -> Iterator[dict[str, Any]]:
    """Yields the decoded records of one split (or all splits) in storage order."""
    manifest = read_manifest(dataset_dir)
    splits = [split] if split is not None else sorted(manifest["splits"])
    for name in splits:
        for path in shard_paths(dataset_dir, name):
            yield from read_shard(path)
