"""The `thawing` command line. The only module that prints; everything else logs.

User errors (`ThawingError`) print one clear message and exit with code 2.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from thawing.errors import ThawingError, InputError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="Multi-task fine-tuning of sentence encoders."
)
console = Console(stderr=True)


def _check_output(path: Path, overwrite: bool) -> None:
    """Fail before any work if `path` cannot be written, so no work is wasted and nothing half-written."""
    if path.exists() and not overwrite:
        raise InputError("output exists; pass --overwrite to replace it", path=path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"cannot write output: folder '{parent}' does not exist", path=path)
    if not os.access(parent, os.W_OK):
        raise InputError(f"cannot write output: folder '{parent}' is not writable", path=path)


@app.command()
def embed(
    model: str = typer.Option(..., "--model", "-m", help="Model directory or hub id."),
    input: Path = typer.Option(..., "--input", "-i", help="Texts: .txt (one per line), .jsonl, .csv or .tsv."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the (N, D) float32 .npy array."),
    text_field: str = typer.Option("text", help="Field holding the text in .jsonl/.csv/.tsv input."),
    prompt: Optional[str] = typer.Option(None, help="Instruction prefix added to every text."),
    batch_size: int = typer.Option(32, min=1, help="Texts per forward pass."),
    max_length: Optional[int] = typer.Option(None, min=1, help="Truncate texts to this many tokens."),
    trust_remote_code: bool = typer.Option(False, help="Run the model's own modeling code (stella needs it)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output file."),
) -> None:
    """Embed texts with a sentence encoder and save them as a .npy array."""
    import numpy as np

    from thawing.atomic import atomic_path
    from thawing.data.readers import read_texts
    from thawing.model.loading import load_encoder

    _check_output(output, overwrite)
    texts = read_texts(input, text_field=text_field)
    encoder = load_encoder(model, max_length=max_length, trust_remote_code=trust_remote_code)
    vectors = encoder.encode(texts, batch_size=batch_size, prompt=prompt, show_progress=len(texts) > 256)
    try:
        with atomic_path(output) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, vectors)
    except OSError as exc:
        raise InputError(f"cannot write output: {exc.strerror}", path=output) from exc
    console.print(f"wrote {vectors.shape[0]} x {vectors.shape[1]} embeddings to {output}")


def main() -> None:
    """Entry point: run the app, turning user errors into a message and exit code 2."""
    logging.basicConfig(level=os.environ.get("THAWING_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except ThawingError as exc:
        console.print(f"error: {exc}", style="bold red", highlight=False, markup=False)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
