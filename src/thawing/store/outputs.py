"""Where a command may write its result (`--output`). Nothing a command reads is ever written over: an output never
equals an input, lies inside one, or holds one. An existing output is replaced only with `--overwrite`, and an
existing folder only when this command wrote it before (its marker file is in it): `--overwrite` never empties a
folder the user made, such as the one that holds their runs.
"""

from __future__ import annotations

from pathlib import Path

from thawing.errors import InputError


def check_output(output: str | Path, inputs: list[str | Path], overwrite: bool, marker: str | None = None) -> None:
    """Refuse `output` (a file, or with `marker` a folder holding that file) unless this command may write it.

    Args:
        output: the path the command writes.
        inputs: what the command reads (files or folders; names that are not local paths are left out).
        overwrite: the user asked to replace an existing output.
        marker: for a folder output, the file every such folder holds (e.g. thawing_onnx.json); None for a file.

    Raises:
        InputError: naming the output and why, before any work.
    """
    out = Path(output).expanduser().resolve()
    for given in inputs:
        source = Path(given).expanduser()
        if not source.exists():
            continue
        source = source.resolve()
        if out == source or source in out.parents:
            raise InputError(f"the output would be written over or inside an input ({given}): choose a path outside "
                             "it", path=output)
        if out in source.parents:
            raise InputError(f"the output folder holds an input ({given}): writing it would destroy that input",
                             path=output)
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise InputError("output exists; pass --overwrite to replace it", path=output)
    if marker is None and out.is_dir():
        raise InputError("output is a folder; give a file path", path=output)
    if marker is not None and not (out.is_dir() and (out / marker).is_file()):
        raise InputError(f"--overwrite replaces only an output of this command (a folder holding {marker}); this "
                         "is not one, so it stays as it is", path=output)
