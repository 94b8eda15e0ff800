"""Docs, comments and docstrings name only modules and settings that exist.

A renamed module or setting leaves its old name behind in prose, where no import or type checker sees it. This
test reads README.md, docs/*.md, the Python of saudial/ and bench/, the bench's shell scripts, the Makefile and
the recipes, and checks every name that can only mean one thing:

- a file path ending in `.py` (`saudial/model/patches.py`, `model/patches.py` relative to saudial/, `patches.py`
  beside the file that names it), and a path into the repository's own folders (`bench/`, `docs/`, `tests/`, ...);
- a module path with an attribute (`training/sync_free.CountingCollator`, `data/examples.split`): the module
  exists and defines the name;
- a dotted module (`saudial.training.recipe`, `saudial.devtools.tiny.build`): the module exists and, if an
  attribute follows, defines it;
- a backquoted `module.name` whose module is one of saudial's (`` `patches.compile_decoder_layers` ``);
- a `SAUDIAL_*` variable: a setting, or one of the variables saudial reads that are not settings;
- a recipe's keys: settings.

Names are checked against files on disk (no imports but the settings), so the whole check takes well under a
second.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
import yaml

from saudial.config.settings import NON_SETTING_VARIABLES, Settings

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "saudial"

# Top-level folders of the repository whose files prose may name by path.
REPO_DIRS = ("saudial", "bench", "docs", "tests", "scripts", "recipes", "deploy", "docker", "mk", "samples", ".ci")

PY_PATH = re.compile(r"(?<![\w./$-])((?:[\w-]+/)*[\w-]+\.py)\b")
REPO_PATH = re.compile(r"(?<![\w./$-])((?:" + "|".join(map(re.escape, REPO_DIRS)) + r")/(?:[\w.-]+/)*[\w.-]*[\w/])")
MODULE_ATTR = re.compile(r"(?<![\w./$-])((?:[a-z_][a-z0-9_]*/)+[a-z_][a-z0-9_]*)\.([A-Za-z_]\w*)")
DOTTED = re.compile(r"(?<![\w.])saudial((?:\.[A-Za-z_]\w*)+)")
BACKQUOTED = re.compile(r"`([a-z_][a-z0-9_]*)\.([A-Za-z_]\w*)")
VARIABLE = re.compile(r"\bSAUDIAL_[A-Z0-9_]*[A-Z0-9]\b")
# File suffixes, so that `x/y.json` or `path/to/file.xlsx` is not read as module y's attribute json.
FILE_SUFFIXES = {
    *("md", "py", "sh", "yaml", "yml", "json", "jsonl", "toml", "txt", "png", "in", "lock", "mk", "cfg"),
    *("xlsx", "xlsm", "csv", "parquet", "log", "gguf", "bin", "mdx", "cpp"),
}
# Upstream files that prose names by their own name (not this repository's).
UPSTREAM_FILES = {"peft_model.py", "convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "base.py"}
# llama.cpp's own source files, which docs/export.md and export/convert.py cite for what the converter mirrors.
UPSTREAM_PATHS = {"conversion/base.py", "conversion/lfm2.py"}
# Names written wrong on purpose: config/sources.py's example of a typo it catches.
EXAMPLES = {"SAUDIAL_LEARNIGN_RATE"}


def scanned_files() -> Iterator[Path]:
    yield ROOT / "README.md"
    yield ROOT / "Makefile"
    yield from sorted((ROOT / "docs").glob("*.md"))
    yield from sorted(PACKAGE.rglob("*.py"))
    yield from sorted((ROOT / "bench").rglob("*.py"))
    yield from sorted((ROOT / "bench").rglob("*.sh"))
    yield from sorted((ROOT / "recipes").glob("*.yaml"))


@cache
def module_basenames() -> frozenset[str]:
    return frozenset(p.stem for p in PACKAGE.rglob("*.py") if p.stem != "__init__")


@cache
def defines(module: Path, name: str) -> bool:
    """Whether the module's source binds `name` at some level (def, class, assignment, import, field)."""
    text = module.read_text()
    pattern = rf"(?m)(^\s*(async\s+def|def|class)\s+{name}\b|^\s*{name}\s*(:|=)|\bimport\b.*\b{name}\b|^\s*\"{name}\")"
    return re.search(pattern, text) is not None


@cache
def settings_variables() -> frozenset[str]:
    """Settings' variables, the other variables saudial reads, and Python names spelled like them (tests')."""
    names = {f"SAUDIAL_{name.upper()}" for name in Settings.model_fields} | NON_SETTING_VARIABLES | EXAMPLES
    for path in (ROOT / "tests").glob("*.py"):
        names |= set(re.findall(r"(?m)^(SAUDIAL_\w+)\s*[:=]", path.read_text()))
    return frozenset(names)


@cache
def quoted_dotted_names() -> frozenset[str]:
    """`saudial.x` strings the code uses as names of their own (loggers)."""
    return frozenset(
        m for p in PACKAGE.rglob("*.py") for m in re.findall(r"[\"'](saudial\.[\w.]+)[\"']", p.read_text())
    )


@cache
def ignored_paths() -> tuple[str, ...]:
    """Paths the .gitignore files keep out of the repository: where runs and tools write."""
    paths = []
    for ignore in [ROOT / ".gitignore", *(p for d in REPO_DIRS for p in (ROOT / d).rglob(".gitignore"))]:
        base = ignore.parent.relative_to(ROOT)
        for line in ignore.read_text().splitlines():
            if line.startswith("/") and "*" not in line:
                paths.append(str(base / line.strip("/")).removeprefix("./"))
    return tuple(paths)


@cache
def repository_basenames() -> frozenset[str]:
    return frozenset(p.name for d in REPO_DIRS for p in (ROOT / d).rglob("*.py") if ".venv" not in p.parts) | {
        p.name for p in ROOT.glob("*.py")
    }


def resolve_py(path: str, source: Path) -> Path | None:
    """The file a `.py` path names: from the repository, from saudial/, beside the naming file, or (for a
    saudial module) in the naming file's package's parent (`jobs/train.py` from saudial/cli/)."""
    for base in (ROOT, PACKAGE, source.parent, source.parent.parent):
        if (base / path).is_file():
            return base / path
    return None


def resolve_module(dotted: str) -> tuple[Path | None, list[str]]:
    """The longest prefix of `saudial.a.b.c` that is a module or package, and the attribute path after it."""
    parts = dotted.strip(".").split(".")
    for cut in range(len(parts), -1, -1):
        base = PACKAGE.joinpath(*parts[:cut])
        if cut and base.with_suffix(".py").is_file():
            return base.with_suffix(".py"), parts[cut:]
        if (base / "__init__.py").is_file():
            return base / "__init__.py", parts[cut:]
    return None, parts


def stale_names(text: str, source: Path) -> Iterator[str]:
    """Every name in `text` (the contents of `source`) that does not exist."""
    prose = source.suffix == ".md"
    lines = text.splitlines()

    def having(needle: str) -> str:  # the lines a pattern can match at all: a fraction of the file, fast
        return "\n".join(line for line in lines if needle in line)

    for match in PY_PATH.finditer(having(".py")):
        path = match.group(1)
        if path in UPSTREAM_FILES or path in UPSTREAM_PATHS or resolve_py(path, source) is not None:
            continue
        if prose and "/" not in path and path in repository_basenames():
            continue  # docs name modules by file name (no two share one)
        yield path
    slashed = having("/")
    for match in REPO_PATH.finditer(slashed):
        path = match.group(1).rstrip(".")
        if path.endswith(".py") or "..." in path or slashed[match.end() :].startswith(("<", "-<")):
            continue  # .py paths are PY_PATH's; `results-<date>.json`, `results-...json` are patterns
        if not path.startswith("saudial/") and not path.endswith("/") and "." not in path.rsplit("/", 1)[-1]:
            continue  # `samples/s` is a unit; folders are named with their slash
        if (ROOT / path).exists() or any(f"{path.rstrip('/')}/".startswith(f"{p}/") for p in ignored_paths()):
            continue
        yield path
    for match in MODULE_ATTR.finditer(slashed):
        path, attr = match.groups()
        if re.match(r"\.\w", slashed[match.end() :]):
            continue  # a file name with two dots (`secret.example.yaml`): REPO_PATH's
        if attr in FILE_SUFFIXES:
            continue
        module = resolve_py(path + ".py", source)
        if module is None:
            if resolve_py(path + "/__init__.py", source) is None and not (ROOT / f"{path}.{attr}").exists():
                yield f"{path}.{attr}"
        elif not defines(module, attr):
            yield f"{path}.{attr}"
    for match in DOTTED.finditer(having("saudial.")):
        if "saudial" + match.group(1) in quoted_dotted_names():
            continue
        module, rest = resolve_module(match.group(1))
        if module is None or (rest and not defines(module, rest[0])):
            yield "saudial" + match.group(1)
    for match in BACKQUOTED.finditer(having("`")):
        name, attr = match.groups()
        if name in module_basenames() and attr not in FILE_SUFFIXES:
            modules = list(PACKAGE.rglob(f"{name}.py"))
            if not any(defines(m, attr) for m in modules):
                yield f"{name}.{attr}"
    for match in VARIABLE.finditer(having("SAUDIAL_")):
        if match.group(0) not in settings_variables():
            yield match.group(0)


def test_docs_and_comments_name_only_what_exists() -> None:
    stale = {}
    for path in scanned_files():
        names = sorted(set(stale_names(path.read_text(), path)))
        if names:
            stale[str(path.relative_to(ROOT))] = names
    assert not stale, f"names of modules or settings that do not exist: {stale}"


def test_recipe_keys_are_settings() -> None:
    for recipe in sorted((ROOT / "recipes").glob("*.yaml")):
        keys = set(yaml.safe_load(recipe.read_text()))
        assert keys <= set(Settings.model_fields), f"{recipe.name}: {sorted(keys - set(Settings.model_fields))}"


@pytest.mark.parametrize(
    "planted",
    [
        "the boundary-aware conv of speed.py",  # a module that is gone
        "see saudial/run/trainer.py",  # a package that is gone
        "(run/sync_free.CountingCollator)",  # a module path with its attribute
        "`split.py` holds the split",  # a bare file name beside the naming file
        "saudial.inference.merge does it",  # a dotted module
        "saudial.training.recipe.no_such_function",  # a dotted attribute
        "`patches.NO_SUCH_CONSTANT`",  # a backquoted attribute of a saudial module
        "data/examples.no_such_split",  # an attribute of a module path
        "set SAUDIAL_NO_SUCH_SETTING=1",  # a setting
        "bench/results-2026-01-01.json",  # a repository file
    ],
)
def test_a_planted_stale_name_is_caught(planted: str) -> None:
    source = PACKAGE / "config" / "settings.py"
    assert list(stale_names(f"# {planted}\n", source)), planted


@pytest.mark.parametrize(
    "fine",
    [
        "saudial/training/sync_free.py and training/trainer.py",
        "training/sync_free.CountingCollator, data/examples.split",
        "saudial.training.recipe.train",
        "`patches.compile_decoder_layers` and `settings.py`",
        "SAUDIAL_LORA_R, SAUDIAL_DEBUG, SAUDIAL_<NAME>, SAUDIAL_*",
        "e.g. torch.compile, i.e. os.environ, model.forward, outputs/adapter/adapter_config.json, $OUT/bench.log",
        "docs/benchmarks.md, bench/gpu-wheels/fetch.sh, tests/test_upstream.py",
    ],
)
def test_ordinary_words_and_live_names_pass(fine: str) -> None:
    source = PACKAGE / "config" / "settings.py"
    assert not list(stale_names(f"# {fine}\n", source)), fine
