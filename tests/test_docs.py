"""The documentation stays true: the config reference is what docs/gen_config.py makes of the config models today, the
site builds in strict mode (a broken link or anchor fails it), and the README is a guide whose links resolve."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
REFERENCE = REPO / "docs" / "reference" / "config.md"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _gen_config():
    spec = importlib.util.spec_from_file_location("gen_config", REPO / "docs" / "gen_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_reference_is_current(tmp_path):
    out = tmp_path / "config.md"
    _gen_config().main([str(out)])
    assert out.read_text(encoding="utf-8") == REFERENCE.read_text(encoding="utf-8"), (
        "docs/reference/config.md is out of date with the config models in src/thawing/config/schema.py: "
        "regenerate it with `.venv/bin/python docs/gen_config.py` and commit the result"
    )


def test_config_reference_has_every_key():
    gen = _gen_config()
    text = gen.render()
    sections = gen.sections()
    assert sections[0][0].__name__ == "RunConfig"
    for model, paths in sections:
        heading = "## Top level" if not paths[0] else f"## `{paths[0]}`"
        start = text.index(heading + "\n")
        end = text.find("\n## ", start + 1)
        body = text[start: end if end >= 0 else None]
        for name in model.model_fields:
            assert f"- **`{name}`** (" in body, f"{model.__name__}.{name} is missing under {heading}"
    # Types, defaults and the comments beside a field in schema.py all come through.
    assert "- **`batch_size`** (`int`, > 0; default: `32`)" in text
    assert "- **`tasks`** (`dict[str, TaskConfig]`; required)" in text
    assert "Micro-batches per optimizer update." in text  # grad_accum's comment
    assert "one stage of a plan" in text.lower()  # StageConfig's docstring


def test_config_reference_types():
    gen = _gen_config()
    from thawing.config import schema

    fields = schema.TrainConfig.model_fields
    assert gen.type_name(fields["mixed_precision"].annotation) == '"auto" | "no" | "bf16" | "fp16"'
    assert gen.type_name(fields["max_tokens"].annotation) == "int | null"
    assert gen.constraints(schema.TaskConfig.model_fields["dev_fraction"]) == "> 0.0, < 1.0"
    assert gen.default_text(schema.LearningRates.model_fields["encoder"]) == "`2.0e-05`"  # a float YAML reads back


def test_docs_site_builds_strict(tmp_path):
    for module, package in (("mkdocs", "mkdocs"), ("material", "mkdocs-material")):
        pytest.importorskip(module, reason=f"{package} is not installed (the docs extra: pip install -e '.[docs]')")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    quickstart = (site / "quickstart" / "index.html").read_text(encoding="utf-8")
    assert 'class="filename">tickets.yaml' in quickstart  # the README's section, included
    assert "[start:quickstart]" not in quickstart
    assert (site / "reference" / "config" / "index.html").is_file()
    assert (site / "benchmarks" / "index.html").is_file()


def test_readme_is_a_guide():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: the reference belongs in docs/"
    text = "\n".join(lines)
    for heading in ("## When to pick it", "## Set up", "## Quickstart", "## Concepts", "## Where next"):
        assert heading in text
    assert "<!-- --8<-- [start:quickstart] -->" in text and "<!-- --8<-- [end:quickstart] -->" in text


def github_anchor(heading: str) -> str:
    """The anchor GitHub (and MkDocs' default) gives a heading: lower case, punctuation but '-' and '_' dropped,
    spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(path: Path) -> set[str]:
    anchors, fenced = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            anchors.add(github_anchor(line.lstrip("#")))
    return anchors


@pytest.mark.parametrize("doc", ["README.md", "CHANGELOG.md"])
def test_links_resolve(doc):
    """Every relative link of the README (read on GitHub, outside the site) names a file that exists, and an anchor
    that one of its headings makes."""
    broken = []
    for target in LINK.findall((REPO / doc).read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (REPO / doc).parent / path if path else REPO / doc
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and anchor not in headings(file):
            broken.append(f"{target}: no heading makes #{anchor}")
    assert not broken, f"{doc}: " + "; ".join(broken)
