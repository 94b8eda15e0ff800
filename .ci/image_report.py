"""Print the measured size and the five largest layers of built images, as the Markdown of docs/docker.md's
"Image size" section, into the CI log (and with --out, into that file as well).

    python3 .ci/image_report.py [--out FILE] "LABEL=IMAGE[=NOTE]" ...

Sizes are what the engine stores, uncompressed (`docker image inspect .Size`); layers come from
`docker history`, with the Dockerfile instruction that made each. CI never edits a tracked file: the
figures in docs/docker.md and README.md are the last measurement a developer copied there by hand, with its
date; this report (the log's "image sizes" step, or --out) is what to copy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout


def short(created_by: str) -> str:
    """The Dockerfile instruction of a history entry, without BuildKit's noise, cut to one table cell."""
    if not created_by.strip():
        return "(the base image)"
    s = re.sub(r"^/bin/(ba)?sh -c (#\(nop\) )?", "", created_by.strip())
    s = re.sub(r"\s*# buildkit$", "", s)
    s = re.sub(r"\|\d+ (\w+=\S* )*", "", s)  # build args BuildKit prefixes to RUN lines
    s = s.replace("-o pipefail -c ", "")
    s = re.sub(r"--mount=\S+\s*", "", s)
    s = re.sub(r"\s+", " ", s).strip()
    if "pip install" in s and "requirement" in s:
        s = "RUN pip install --require-hashes -r requirements.lock && pip check"
    elif "pip install" in s and "/src" in s:
        s = "RUN pip install --no-deps /src (saudial itself: the saudial command)"
    elif "pip install" in s:
        s = "RUN pip install $TORCH_SPEC (torch and the wheels it requires)"
    elif "apt-get install" in s:
        s = "RUN apt-get install python3 python3-venv ca-certificates; user saudial; python3 -m venv"
    s = s.replace("|", "\\|")
    return s if len(s) <= 90 else s[:87] + "..."


def measure(ref: str) -> dict:
    inspect = json.loads(docker("image", "inspect", ref))[0]
    layers = []
    for line in docker(
        "history", "--no-trunc", "--human=false", "--format", "{{.Size}}\t{{.CreatedBy}}", ref
    ).splitlines():
        size, _, created_by = line.partition("\t")
        if int(size) > 0:
            layers.append((int(size), short(created_by)))
    layers.sort(key=lambda x: -x[0])
    return {"size": inspect["Size"], "layers": layers, "n_layers": len(inspect["RootFS"]["Layers"])}


def gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def report(measured: list[tuple[str, str, str, dict]], engine: str, day: str) -> str:
    """The Markdown block of docs/docker.md's "Image size" and README's sentence, for (label, image, note,
    `measure`'s result) of each image."""
    rows, details, sentence = [], [], []
    for label, ref, note, m in measured:
        details.append(f"\n{label} (`{ref}`), five largest layers:\n\n| size | layer |\n| ---: | --- |")
        details += [f"| {gb(size)} | `{what}` |" for size, what in m["layers"][:5]]
        rows.append(f"| {label} | `{ref}` | {note} | **{gb(m['size'])}** |")
        sentence.append(f"{gb(m['size'])} for the {label} image")
    return "\n".join(
        [
            f"Measured by CI (`.ci/docker.sh`) on {day}, Docker Engine {engine}: sizes uncompressed, as the engine "
            "stores them (`docker image inspect`).",
            "",
            "| flavour | image | base, torch | size |",
            "| --- | --- | --- | ---: |",
            *rows,
            *details,
            "",
            f"README.md: {' and '.join(sentence)} (measured {day}).",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, help="also write the report here (an untracked file: CI uses its work dir)")
    ap.add_argument("images", nargs="+", help="LABEL=IMAGE[=NOTE]")
    a = ap.parse_args(argv)
    measured = []
    for spec in a.images:
        label, ref, *note = spec.split("=", 2)
        m = measure(ref)
        print(f"{label} ({ref}): {gb(m['size'])} uncompressed ({m['size']} bytes), {m['n_layers']} layers")
        measured.append((label, ref, note[0] if note else "", m))
    engine = docker("version", "--format", "{{.Server.Version}}").strip()
    text = report(measured, engine, dt.date.today().isoformat())
    print('\nFor docs/docker.md\'s "Image size" and README.md (copy by hand when they change):\n' + text)
    if a.out:
        a.out.write_text(text)
        print(f"image report written to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
