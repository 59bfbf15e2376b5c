"""Input data: readers for each file format, tag scheme checks, and task loading with validation."""

from thawing.data.readers import FORMATS, Row, detect_format, read_rows, read_texts
from thawing.data.records import Example
from thawing.data.tags import TAG_SCHEMES, check_tags, seqeval_scheme
from thawing.data.tasks import TaskData, load_task, load_tasks

__all__ = [
    "FORMATS",
    "TAG_SCHEMES",
    "Example",
    "Row",
    "TaskData",
    "check_tags",
    "detect_format",
    "load_task",
    "load_tasks",
    "read_rows",
    "read_texts",
    "seqeval_scheme",
]
