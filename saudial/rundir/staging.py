"""What saudial may touch in an output directory, and the swap that puts a finished run in place.

A run in progress lives in ``OUTPUT_DIR/staging/`` (the Trainer's output_dir: checkpoints, logs, then
the adapter, tokenizer, evaluation and the run record). Only when all of it is complete does `promote`
move it up into OUTPUT_DIR, replacing the previous finished run's files, each with `os.replace`. Until
then OUTPUT_DIR's finished run is untouched: a run that fails at any point costs nothing that was there.

In OUTPUT_DIR saudial replaces or deletes only names that its own record lists (`record.owned`):
whatever else is there is foreign, and a directory with foreign files is refused (`foreign`), overwrite
or not. OUTPUT_DIR/staging is saudial's own folder once its record is in it (written before anything
else): everything in it is the run's, also what a process killed mid-save left unrecorded. Some
directories are never an output directory (`check_not_protected`): /, $HOME, the current directory or
one above it, and the data file's folder or one above it.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any

from saudial.errors import ConfigError, printable
from saudial.rundir import modes, record

log = logging.getLogger(__name__)

STAGING = record.STAGING  # OUTPUT_DIR/staging: the run in progress
JOURNAL = "promoting.json"  # in staging while its files move up: a crash midway is completed at the next start
REPLACED = "replaced"  # in staging while promoting: the previous run's files, deleted once the swap is done
HUB_DOWNLOAD = record.HUB_DOWNLOAD  # in staging while the Hub's last checkpoint downloads (publish/hub.py)
WRITE_PROBE = ".write-test"
# Left by an atomic write (record.write_json) that a crash cut short: saudial's own, never the user's.
TEMPORARY = {f"{record.MANIFEST}.tmp", f"{record.METRICS}.tmp"}
# saudial's short-lived helpers in staging, never part of a run.
HELPERS = {JOURNAL, REPLACED, HUB_DOWNLOAD, WRITE_PROBE, *TEMPORARY}
# What saudial wrote into an output directory before its record listed its files (no `files` key).
LEGACY_CHECKPOINT = re.compile(r"checkpoint-\d+")
LEGACY = {
    *("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json"),
    *("special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "vocab.json", "merges.txt"),
    *(record.METRICS, record.RESULTS_MD, record.PREDICTIONS, "README.md", "training_args.bin", "logs"),
}


def staging_dir(output_dir: Path) -> Path:
    return output_dir / STAGING


def check_can_be_directory(path: Path, setting: str, fix: str = "choose a directory path, e.g. 'outputs/run'") -> None:
    """Refuse (exit 2) a path that cannot be a directory: under a regular file (`file.txt/out`), in a symlink
    loop, or itself something other than a directory. Whatever does not exist yet is created later."""
    shown = repr(printable(str(path)))
    probe = path.expanduser().absolute()
    for place in [*reversed(probe.parents), probe]:
        try:
            info = os.stat(place)
        except FileNotFoundError:
            return  # from here on nothing exists: mkdir creates it
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                why = f"a symlink loop at {printable(str(place))!r}"
            elif exc.errno == errno.ENOTDIR:
                why = f"under {printable(str(place.parent))!r}, which is not a directory"
            else:
                why = f"not a place saudial can look at ({exc.strerror})"
            raise ConfigError(f"{setting}={shown} is {why}: {fix}") from None
        if not stat.S_ISDIR(info.st_mode):
            what = "a file, not a directory" if place == probe else f"under {printable(str(place))!r}, which is a file"
            raise ConfigError(f"{setting}={shown} is {what}: {fix}")


def check_not_protected(path: Path, setting: str, data: Path | None = None) -> None:
    """Refuse (exit 2) an output directory that saudial must never write into or clean, or that cannot be one."""
    if not str(path).strip():
        raise ConfigError(f"{setting} is empty: set it to the directory for the run's outputs, e.g. 'outputs/run'")
    check_can_be_directory(path, setting)
    target = path.expanduser().resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    why = None
    if target == Path(target.anchor):
        why = "the root directory"
    elif target == home:
        why = "your home directory ($HOME)"
    elif target == cwd or target in cwd.parents:
        why = "the current directory" if target == cwd else "a directory above the current one"
    elif data is not None and (target == data.resolve().parent or target in data.resolve().parents):
        where = "the folder that holds" if target == data.resolve().parent else "a folder above"
        why = f"{where} the data file {data.name!r}"
    if why:
        raise ConfigError(
            f"{setting}={str(path)!r} is {why}, which saudial never uses as an output directory: "
            "choose a new or empty directory for this run, e.g. 'outputs/run'"
        )


def ours(directory: Path, manifest: dict[str, Any] | None) -> set[str]:
    """The entries of `directory` that saudial wrote: what its record lists (the record included); for a
    record of an older saudial (no `files`), the names that saudial wrote."""
    if not directory.is_dir():
        return set()
    legacy = manifest is not None and record.FILES not in manifest
    known = (record.owned(manifest) if manifest is not None else set()) | TEMPORARY | (LEGACY if legacy else set())
    return {p.name for p in directory.iterdir() if p.name in known or (legacy and LEGACY_CHECKPOINT.fullmatch(p.name))}


def foreign(directory: Path, manifest: dict[str, Any] | None) -> list[str]:
    """Entries of `directory` that no saudial run wrote (sorted): saudial never replaces or deletes these."""
    if not directory.is_dir():
        return []
    mine = ours(directory, manifest)
    return sorted(p.name for p in directory.iterdir() if p.name not in mine)


def contents(run_dir: Path) -> list[str]:
    """Everything in staging but saudial's helpers: the run's files and folders."""
    return sorted(p.name for p in run_dir.iterdir() if p.name not in HELPERS) if run_dir.is_dir() else []


def check_records(output_dir: Path, unfinished: dict[str, Any] | None, where: str) -> dict[str, Any] | None:
    """The finished run's record in OUTPUT_DIR (None: none there), given the unfinished one's in staging.
    Refuses a damaged record, and a directory with files no run recorded."""
    run_dir = staging_dir(output_dir)
    damage = record.damaged(output_dir / record.MANIFEST)
    if damage:
        raise ConfigError(
            f"{output_dir / record.MANIFEST} is damaged ({damage}), so saudial cannot tell which files in "
            f"{output_dir} it wrote and will neither replace nor delete any of them: choose another SAUDIAL_OUTPUT_DIR "
            "(this one is left as it is)"
        )
    finished = record.read_json(output_dir / record.MANIFEST)
    for manifest, directory in ((finished, output_dir), (unfinished, run_dir)):
        check_product(where, directory, manifest, "training run")
    staging_is_ours = not run_dir.exists() or (run_dir.is_dir() and (unfinished is not None or helpers_only(run_dir)))
    strangers = [n for n in foreign(output_dir, finished) if n != STAGING or not staging_is_ours]
    if strangers:
        hint = "" if finished or unfinished else f", e.g. {str(output_dir / 'run')!r}"
        raise ConfigError(
            f"{where} holds files that no saudial run wrote there ({listing(strangers)}): saudial never "
            f"replaces or deletes those, not even with SAUDIAL_OVERWRITE_OUTPUT_DIR=true; choose a new or empty "
            f"directory for this run{hint}, or move those files elsewhere"
        )
    if finished is not None and finished.get("status") not in (record.FINISHED, record.PUSHED, None):
        raise ConfigError(
            f"{where} holds the unfinished run of an older saudial (checkpoints beside its adapter): finish it with "
            "that version, or choose another SAUDIAL_OUTPUT_DIR for this run (nothing there was changed)"
        )
    return finished


def check_product(where: str, directory: Path, manifest: dict[str, Any] | None, wanted: str) -> None:
    """Refuse a folder that holds another command's output: training, merge, export and evaluate --output-dir each
    replace only their own."""
    found = wanted if manifest is None else record.product(manifest)
    if found != wanted:
        raise ConfigError(
            f"{where} holds a saudial {found} ({listing(sorted(ours(directory, manifest)))}), not an earlier {wanted}: "
            f"saudial replaces there only an earlier {wanted}, not even with SAUDIAL_OVERWRITE_OUTPUT_DIR=true; choose "
            "another directory"
        )


def helpers_only(run_dir: Path) -> bool:
    return not contents(run_dir)


def listing(names: list[str], limit: int = 4) -> str:
    """'a, b, c and 2 more' (a directory's entries in a one-line message)."""
    shown = ", ".join(repr(n) if len(n) <= 40 else repr(n[:37] + "...") for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def remove(directory: Path, names: list[str] | set[str]) -> None:
    """Delete `names` from `directory`: only ever called with names a saudial record lists."""
    for name in names:
        path = directory / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def promote(output_dir: Path) -> None:
    """Move the finished run in OUTPUT_DIR/staging up into OUTPUT_DIR, replacing the previous run's files.

    Its record (status finished, listing what is now in OUTPUT_DIR) moves last. A journal written first
    makes the swap complete even if the process dies midway: `resume_promotion` finishes it at the next
    start. The previous run's files are deleted only after the new ones are in place.
    """
    staging = staging_dir(output_dir)
    new = [name for name in contents(staging) if name != record.MANIFEST]
    previous = record.read_json(output_dir / record.MANIFEST)
    old = sorted(ours(output_dir, previous) - {record.MANIFEST, STAGING} - TEMPORARY) if previous else []
    appeared = [n for n in new if n not in old and (output_dir / n).exists()]
    if appeared:  # written by something else while this run was in progress: never replaced
        raise ConfigError(
            f"{listing(appeared)} appeared in {output_dir} during the run: saudial does not replace files it did "
            f"not write; move them away and start again with the same settings (the finished run in {staging} "
            "is then moved into place)"
        )
    modes.as_umask(staging)  # safetensors' files readable as the run's others are
    record.update(staging, {"status": record.FINISHED, record.FINISHED: record.now(), record.FILES: new})
    record.write_json(staging / JOURNAL, {"new": new, "old": old})
    _fsync_dir(staging)
    _roll_forward(output_dir)


def resume_promotion(output_dir: Path) -> bool:
    """Finish a swap that a crash interrupted (its journal is still in staging). True if there was one."""
    journal = staging_dir(output_dir) / JOURNAL
    if not journal.is_file():
        return False
    log.warning("completing the move of the finished run in %s into place (interrupted earlier)", journal.parent)
    _roll_forward(output_dir)
    return True


def _roll_forward(output_dir: Path) -> None:
    """Idempotent: each step checks where its file is, so running it again after a crash completes it."""
    staging = staging_dir(output_dir)
    plan = record.read_json(staging / JOURNAL) or {}
    new, old = list(plan.get("new", [])), list(plan.get("old", []))
    replaced = staging / REPLACED
    replaced.mkdir(exist_ok=True)

    def set_aside(name: str) -> None:
        if (output_dir / name).exists() or (output_dir / name).is_symlink():
            remove(replaced, [name])  # a copy set aside by an earlier, interrupted attempt
            os.replace(output_dir / name, replaced / name)

    for name in new:
        if (staging / name).exists():  # not moved yet: whatever is at its place is the previous run's
            set_aside(name)
            os.replace(staging / name, output_dir / name)
    for name in old:
        if name not in new:
            set_aside(name)
    if (staging / record.MANIFEST).exists():
        os.replace(staging / record.MANIFEST, output_dir / record.MANIFEST)
    _fsync_dir(output_dir)
    shutil.rmtree(replaced)
    (staging / JOURNAL).unlink()
    remove(staging, TEMPORARY)
    try:
        staging.rmdir()
    except OSError:
        log.warning("%s still holds files after the swap; they were left there", staging)
