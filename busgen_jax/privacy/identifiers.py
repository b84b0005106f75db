"""Does a label value look like it identifies a person? Checks for extra label columns.

An imported table may carry columns beyond the schema's; kept as labels, they travel with every
record into synthetic data and shared datasets. A column is only kept when it is named in the
import config, and even then its name and every value are checked here: names, dates, record
numbers, phone numbers, e-mail and street addresses are refused unless the column is explicitly
marked de-identified. The patterns are deliberately broad (a false alarm costs one config line;
a miss leaks a patient), and they never echo the value they matched.
"""

from __future__ import annotations

import re

_MONTHS = "jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec"
_STREETS = (
    "street|st|road|rd|avenue|ave|lane|ln|drive|dr|boulevard|blvd|way|court|ct|place|pl|"
    "square|sq|terrace|close|crescent|highway|hwy|strasse|straße|rue|via|calle"
)
_VALUE_PATTERNS = (
    ("an e-mail address", re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")),
    (
        "a date",
        re.compile(
            r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b|\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b"
            r"|\b(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b"
            rf"|\b\d{{1,2}}\s*(?:{_MONTHS})[a-z]*\.?\s*\d{{2,4}}\b"
            rf"|\b(?:{_MONTHS})[a-z]*\.?\s+\d{{1,2}},?\s+\d{{4}}\b",
            re.IGNORECASE,
        ),
    ),
    ("a social-security number", re.compile(r"\b\d{3}-\d{2}-\d{4}\b")),
    ("a phone number", re.compile(r"(?<![\w.])\+?\(?\d{2,4}\)?(?:[\s.-]?\d{2,4}){2,4}(?![\w.])")),
    # Medical record / accession numbers: 6+ digits, or 6+ characters with 4+ digits.
    ("an identifier", re.compile(r"\b\d{6,}\b|\b(?=(?:[A-Za-z-]*\d){4})[A-Za-z0-9-]{6,}\b")),
    ("a street address", re.compile(rf"\b\d+[a-z]?\s+(?:\w+\s+){{0,3}}(?:{_STREETS})\b\.?", re.I)),
    # "Smith, John", "John Smith", "Jane A. Doe", or DICOM's "DOE^JANE".
    (
        "a person's name",
        re.compile(r"^[A-Z][a-z'-]+(?:,\s*|\s+)(?:[A-Z]\.?\s+)?[A-Z][a-z'-]+$|\w\^\w"),
    ),
)
_COLUMN_NAMES = re.compile(
    r"name|birth|dob|address|street|phone|mobile|fax|e-?mail|mrn|record_?n|accession|ssn|"
    r"social|insurance|zip|postcode|postal|ip_?addr|url|licen[cs]e|passport|national_?id|"
    r"date|patient|physician|doctor",
    re.IGNORECASE,
)


def identifying_column_name(column: str) -> bool:
    """True for column names that usually hold identifiers (patient_name, birth_date, mrn...)."""
    return bool(_COLUMN_NAMES.search(column))


def identifying_kind(value: str) -> str | None:
    """What `value` looks like ("a date", "a person's name", ...), or None if nothing."""
    # Plain numbers (ages, sizes, scores) are labels, not identifiers, below six digits.
    text = value.strip()
    if re.fullmatch(r"[-+]?\d{1,5}(?:\.\d+)?", text):
        return None
    for kind, pattern in _VALUE_PATTERNS:
        if kind == "a phone number" and sum(c.isdigit() for c in text) < 9:
            continue
        if pattern.search(text):
            return kind
    return None
