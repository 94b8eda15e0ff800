"""The --output folder of `saudial merge` and `saudial export`: made ready for one to be written into its staging
folder, and taken back when it fails before its move into place (rundir/staging.py moves it).

The rules are a training run's: a folder holding anything saudial did not write is refused, and an earlier merge
or export is replaced only with SAUDIAL_OVERWRITE_OUTPUT_DIR=true, once the new one is complete.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saudial.errors import ConfigError, faults
from saudial.rundir import record, staging

if TYPE_CHECKING:
    from saudial.config.settings import Settings


def prepare(output: Path, settings: Settings, kind: str, listed_by: Path | None = None) -> Path:
    """An empty --output/staging to write the merge (or export: `kind`) into; refuse an --output that is not
    for one. A folder this made is taken back where it fails (a full disk while writing the record). `listed_by`:
    the run whose record lists --output among its own files (an export into its adapter's folder)."""
    where, key = f"--output {str(output)!r}", f"saudial_{kind}"
    staging.check_not_protected(output, "--output", settings.data)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"{where} is a file, not a directory")
    check_not_inside_a_run(where, output, listed_by)
    work = staging.staging_dir(output)
    made = not output.exists()
    try:
        return _prepare(output, work, where, key, kind, settings)
    except BaseException:
        if made:
            discard(work, output)  # all of it this call's: the folder did not exist
        raise


def _prepare(output: Path, work: Path, where: str, key: str, kind: str, settings: Settings) -> Path:
    with faults(output):
        output.mkdir(parents=True, exist_ok=True)
        staging.resume_promotion(output)
        in_work = record.read_json(work / record.MANIFEST) if work.is_dir() else None
        work_is_ours = not work.exists() or (
            work.is_dir() and (not staging.contents(work) or bool(in_work and in_work.get(key)))
        )
        fix = (
            ", not even with SAUDIAL_OVERWRITE_OUTPUT_DIR=true; choose a new or empty directory, or move those files "
            "elsewhere"
        )
        earlier = earlier_record(where, output, kind, fix, [staging.STAGING] if work_is_ours else [])
        if earlier is not None and not settings.overwrite_output_dir:
            kept = staging.listing(sorted(staging.ours(output, earlier)))
            raise ConfigError(
                f"{where} is not empty: it holds an earlier {kind} ({kept}): choose another directory, or set "
                f"SAUDIAL_OVERWRITE_OUTPUT_DIR=true to replace those files once the new {kind} is written"
            )
        staging.remove(work, staging.contents(work))  # an earlier one that did not finish: saudial's own
        work.mkdir(exist_ok=True)
        record.update(work, {"saudial_run": 1, key: 1, record.FILES: []}, replace=True)  # saudial's
    return work


def check_not_inside_a_run(where: str, output: Path, listed_by: Path | None = None) -> None:
    """Refuse (exit 2) an --output inside the folder of a saudial run or product (but `listed_by`'s own): the next
    run there would refuse a folder it did not write, and an overwrite of it would not know the files."""
    target = output.expanduser().absolute().resolve()
    for folder in target.parents:
        if listed_by is not None and folder == listed_by.resolve() and target.parent == folder:
            continue
        manifest = record.read_json(folder / record.MANIFEST)
        if manifest is not None and manifest.get("saudial_run"):
            raise ConfigError(
                f"{where} is inside the folder of a saudial {record.product(manifest)} ({str(folder)!r}), which "
                "holds only what that run wrote: choose a folder outside it, e.g. beside it"
            )


def earlier_record(where: str, folder: Path, kind: str, fix: str, skip: Collection[str] = ()) -> dict[str, Any] | None:
    """The record of an earlier `kind` (merge, export, evaluation) in `folder`: None where there is none. Refuses
    (exit 2) another command's output, and a folder holding files that no saudial `kind` wrote there (but `skip`)
    or a damaged record: saudial cannot tell which files are its own. `fix`: what the user can do, said after "saudial
    never replaces or deletes those"."""
    damage = record.damaged(folder / record.MANIFEST)
    earlier = None if damage else record.read_json(folder / record.MANIFEST)
    staging.check_product(where, folder, earlier, kind)
    strangers = [n for n in staging.foreign(folder, earlier) if n not in skip]
    if strangers or damage:
        shown = staging.listing(strangers or [record.MANIFEST])
        never = "saudial never replaces or deletes those"
        raise ConfigError(f"{where} holds files that no saudial {kind} wrote there ({shown}): {never}{fix}")
    return earlier


def discard(work: Path, created: Path | None) -> None:
    """Take back what `prepare` made for a merge or export that failed before its move into place: `work`
    (saudial's own) goes, and `created`, the output folder, where this command made it and it is empty. Best
    effort, so that the failure's own error is what the user sees: the next merge or export clears what is left."""
    with contextlib.suppress(OSError):
        staging.remove(work, [*staging.contents(work), record.MANIFEST])
    for folder in (work, *([created] if created is not None else [])):
        with contextlib.suppress(OSError):  # not empty: a helper of an interrupted run, an earlier product's files
            folder.rmdir()
