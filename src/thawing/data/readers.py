"""Read data files into records that remember their source line, so every error can point at it.

Formats: JSON Lines, CSV, TSV, CoNLL (one token per line) and Hugging Face datasets (a directory
written by `save_to_disk`, or a hub name). Every problem the user can fix raises `InputError` with
the file and, where there is one, the 1-based line.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from thawing.errors import InMemory, InputError

logger = logging.getLogger(__name__)

Row = tuple[int, dict]
"""A record with its 1-based source line (CoNLL: the sentence's first token; HF: row index + 1)."""

FORMATS = ("jsonl", "csv", "tsv", "conll", "hf")
_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv",
             ".conll": "conll", ".iob": "conll", ".bio": "conll"}
# Our split names -> the names a Hugging Face DatasetDict may use for them, in order of preference.
HF_SPLITS = {"train": ("train",), "dev": ("dev", "validation"), "test": ("test",)}
# A folder written by save_to_disk holds one of these (a DatasetDict, a Dataset); any other folder is a dataset's own.
_SAVED = ("dataset_dict.json", "state.json")


def detect_format(path: str | Path, fmt: str = "auto") -> str:
    """Resolve `auto` to a concrete format from the path's suffix (a directory is a HF dataset).

    Raises:
        InputError: If the file does not exist or its suffix is not a supported one.
    """
    if isinstance(path, InMemory):
        return "jsonl"  # rows of JSON values (config.py made them so), as the run directory's copy of them holds
    if fmt != "auto":
        if fmt not in FORMATS:
            raise InputError(f"unknown format '{fmt}'; choose one of auto, {', '.join(FORMATS)}", path=path)
        return fmt
    path = Path(path)
    if path.is_dir():
        return "hf"
    if not path.exists():
        raise InputError("file not found", path=path)
    found = _SUFFIXES.get(path.suffix.lower())
    if found is None:
        supported = ", ".join(_SUFFIXES) + " or a saved Hugging Face dataset directory"
        raise InputError(f"cannot tell the format from suffix '{path.suffix}'; supported: {supported}", path=path)
    return found


def read_rows(path: str | Path, fmt: str = "auto", split: str | None = None, *, hf_subset: str | None = None,
              hf_split: str | None = None) -> list[Row]:
    """Read a data file (or HF dataset) into `(line, record)` pairs.

    Args:
        path: A file, a `save_to_disk` directory, or (format `hf`) a dataset folder or hub dataset name.
        fmt: One of `auto`, `jsonl`, `csv`, `tsv`, `conll`, `hf`.
        split: For HF datasets with several splits: `train`, `dev` (or `validation`) or `test`.
        hf_subset: HF only: the dataset's subset (config name) to load.
        hf_split: HF only: the dataset's own split name (or slice, `train[:90%]`) to read instead of `split`.

    Returns:
        The records in file order; CoNLL records are `{"tokens": [...], "tags": [...]}`.

    Raises:
        InputError: For a missing, unreadable or malformed input, naming the file and line.
    """
    fmt = detect_format(path, fmt)
    if fmt == "hf":
        return _read_hf(path, split, hf_subset, hf_split)
    text = _read_text(Path(path))
    reader = {"jsonl": _parse_jsonl, "csv": _parse_csv, "tsv": _parse_csv, "conll": _parse_conll}[fmt]
    rows = reader(text, path, "\t" if fmt == "tsv" else ",")
    logger.debug("read %d rows from %s (%s)", len(rows), path, fmt)
    return rows


def read_texts(path: str | Path, text_field: str = "text") -> list[str]:
    """Read the texts to embed: `.txt` one per line (blank lines skipped), or one field of each row.

    Raises:
        InputError: For a missing file or field, a non-string text, or no texts at all.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        texts = [line.rstrip("\n") for line in io.StringIO(_read_text(path), newline=None) if line.strip()]
    elif suffix in (".jsonl", ".json", ".csv", ".tsv"):
        texts = []
        for line, record in read_rows(path, _SUFFIXES[suffix]):
            if text_field not in record:
                raise InputError("missing field", path=path, line=line, field=text_field)
            value = record[text_field]
            if not isinstance(value, str):
                raise InputError(f"expected a string, got {type(value).__name__}", path=path, line=line,
                                 field=text_field)
            texts.append(value)
    else:
        raise InputError(f"unsupported suffix '{path.suffix}' for texts; use .txt, .jsonl, .json, .csv or .tsv",
                         path=path)
    if not texts:
        raise InputError("no texts in input", path=path)
    return texts


def read_pairs(path: str | Path, fields: Sequence[str]) -> list[list[str]]:
    """Read the pairs to predict: the texts in `fields` of each row of a .jsonl, .json, .csv or .tsv file.

    Raises:
        InputError: For a missing file or field (naming its line), a text that is not a non-empty string, an
            unsupported suffix, or no rows at all.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv", ".tsv"):
        raise InputError(f"unsupported suffix '{path.suffix}' for pairs; use .jsonl, .json, .csv or .tsv (one row "
                         f"per pair, with the fields {', '.join(fields)})", path=path)
    pairs = []
    for line, record in read_rows(path, _SUFFIXES[suffix]):
        row = []
        for name in fields:
            if name not in record:
                raise InputError("missing field", path=path, line=line, field=name)
            value = record[name]
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"expected a non-empty string, got {value!r:.80}", path=path, line=line, field=name)
            row.append(value)
        pairs.append(row)
    if not pairs:
        raise InputError("no pairs in input", path=path)
    return pairs


def _read_text(path: Path) -> str:
    """The file as UTF-8 (a BOM is dropped); a decode error names the line it is on. Only a regular file is read: a
    device such as /dev/zero would be read whole, without end."""
    if path.exists() and not path.is_dir() and not path.is_file():
        raise InputError("not a regular file (a device, a pipe or a socket): give a data file", path=path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError("file not found", path=path) from None
    except IsADirectoryError:
        raise InputError("is a directory, expected a file", path=path) from None
    except PermissionError:
        raise InputError("cannot read file: permission denied", path=path) from None
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror or exc}", path=path) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"not UTF-8 text (byte {data[exc.start]:#04x})", path=path, line=line) from None


def _parse_jsonl(text: str, path: str | Path, _delimiter: str) -> list[Row]:
    rows: list[Row] = []
    for number, line in enumerate(io.StringIO(text, newline=None), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"not valid JSON: {exc.msg} (column {exc.colno})", path=path, line=number) from None
        except (ValueError, RecursionError) as exc:  # a number of thousands of digits, nesting past Python's stack
            raise InputError(f"not valid JSON here ({type(exc).__name__}: {str(exc)[:120]})", path=path,
                             line=number) from None
        if not isinstance(record, dict):
            raise InputError(f"expected a JSON object, got {type(record).__name__}", path=path, line=number)
        rows.append((number, record))
    return rows


def _parse_csv(text: str, path: str | Path, delimiter: str) -> list[Row]:
    # TSV is read without quote handling: NLP TSVs (GLUE, SST) carry bare '"' inside texts, which
    # csv's quoting would treat as the start of a multi-line field.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    kind = "TSV" if delimiter == "\t" else "CSV"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    rows: list[Row] = []
    header: list[str] | None = None
    try:
        while True:
            start = reader.line_num + 1  # a quoted field may span lines; report where the row starts
            try:
                fields = next(reader)
            except StopIteration:
                break
            if not fields:  # a blank line
                continue
            if header is None:
                header = fields
                duplicates = sorted({name for name in header if header.count(name) > 1})
                if duplicates:
                    raise InputError(f"duplicate column(s) in header: {', '.join(duplicates)}", path=path, line=start)
                continue
            if len(fields) != len(header):
                raise InputError(f"expected {len(header)} fields as in the header, found {len(fields)}",
                                 path=path, line=start)
            rows.append((start, dict(zip(header, fields, strict=True))))
    except csv.Error as exc:
        raise InputError(f"malformed {kind}: {exc}", path=path,
                         line=reader.line_num) from None
    return rows


def _parse_conll(text: str, path: str | Path, _delimiter: str) -> list[Row]:
    rows: list[Row] = []
    tokens: list[str] = []
    tags: list[str] = []
    first = 0
    for number, line in enumerate(io.StringIO(text, newline=None), start=1):
        columns = line.split()
        if not columns or columns[0] == "-DOCSTART-":
            if tokens:
                rows.append((first, {"tokens": tokens, "tags": tags}))
                tokens, tags = [], []
            continue
        if len(columns) < 2:
            raise InputError(f"expected a token and a tag separated by whitespace, found one column: {line.strip()!r}",
                             path=path, line=number)
        if not tokens:
            first = number
        tokens.append(columns[0])
        tags.append(columns[-1])
    if tokens:
        rows.append((first, {"tokens": tokens, "tags": tags}))
    return rows


def _read_hf(path: str | Path, split: str | None, subset: str | None, hf_split: str | None) -> list[Row]:
    datasets = import_datasets(path)
    saved = Path(path).is_dir() and any((Path(path) / name).is_file() for name in _SAVED)
    if saved and subset is not None:
        raise InputError(f"hf_subset '{subset}': a folder written by save_to_disk holds no subsets (configs); "
                         "save each subset to a folder of its own", path=path)
    try:
        if saved:
            loaded = datasets.load_from_disk(str(path))
        else:  # a hub name, or a dataset folder (data files, a README.md naming its configs): load_dataset's own
            loaded = datasets.load_dataset(str(path), subset, split=hf_split)
    except (FileNotFoundError, ValueError, ConnectionError) as exc:
        hint = " (hf_subset names a subset, hf_split a split)" if isinstance(exc, ValueError) else ""
        raise InputError(f"cannot load Hugging Face dataset: {exc}{hint}", path=path) from None
    except datasets.exceptions.DatasetBuildError as exc:  # a folder of files datasets cannot parse: say why
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        raise InputError(f"a folder is read as a Hugging Face dataset, and its files cannot be read as one{cause}; "
                         "give a data file (.jsonl, .csv, .tsv, .conll) or a folder written by save_to_disk",
                         path=path) from None
    if isinstance(loaded, datasets.DatasetDict):
        names = (hf_split,) if hf_split is not None else HF_SPLITS.get(split or "train", (split,))
        name = next((n for n in names if n in loaded), None)
        if name is None:
            raise InputError(f"no '{hf_split or split or 'train'}' split (tried {', '.join(names)}); the dataset has "
                             f"{', '.join(loaded) or 'no splits'}", path=path)
        loaded = loaded[name]
    elif saved and hf_split is not None:
        raise InputError(f"hf_split '{hf_split}': this folder holds a single split (a Dataset, not a DatasetDict)",
                         path=path)
    return [(index + 1, record) for index, record in enumerate(dataset_records(loaded))]


def import_datasets(path: str | Path | None = None) -> Any:
    """The `datasets` package, or an error saying how to install it (it is an extra: thawing[hf])."""
    try:
        import datasets  # slow to import; only HF inputs need it
    except ImportError:
        raise InputError('Hugging Face datasets need the datasets package: pip install "thawing[hf]"',
                         path=path) from None
    return datasets


def dataset_records(dataset: Any) -> list[dict]:
    """A `datasets.Dataset`'s rows as dicts, ClassLabel ids turned into their names (so tags and labels read as
    text, as they would from a file)."""
    decoders = {col: _label_names(feature) for col, feature in dataset.features.items()}
    decoders = {col: fn for col, fn in decoders.items() if fn is not None}
    records = dataset.to_list()
    for record in records:
        for col, decode in decoders.items():
            record[col] = decode(record[col])
    return records


def _label_names(feature: Any) -> Any:
    """A function turning ClassLabel ids (or lists of them) into their names, so tags read as text."""
    import datasets

    def name_of(label: datasets.ClassLabel, value: Any) -> Any:
        # Ids outside the names (e.g. -1 for unlabeled test rows) stay as they are and fail later.
        return label.names[value] if isinstance(value, int) and 0 <= value < label.num_classes else value

    if isinstance(feature, datasets.ClassLabel):
        return lambda value: name_of(feature, value)
    inner = getattr(feature, "feature", None)
    if isinstance(inner, datasets.ClassLabel):
        return lambda values: [name_of(inner, v) for v in values] if isinstance(values, list) else values
    return None
