"""Input data: readers for each file format, tag scheme checks, rows in memory, tokenizing and batching, task
sampling. Loading a config's tasks sits above the config, in config/tasks.py."""

from thawing.data.readers import FORMATS, Row, detect_format, read_rows, read_texts
from thawing.data.records import Example
from thawing.data.tags import TAG_SCHEMES, check_tags, seqeval_scheme

__all__ = [
    "FORMATS",
    "TAG_SCHEMES",
    "Example",
    "Row",
    "check_tags",
    "detect_format",
    "read_rows",
    "read_texts",
    "seqeval_scheme",
]
