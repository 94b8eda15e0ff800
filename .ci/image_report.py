"""Print the measured size and the five largest layers of built images, and write them into docs/docker.md.

    python3 .ci/image_report.py [--docs docs/docker.md] [--readme README.md] "LABEL=IMAGE[=NOTE]" ...

Sizes are what the engine stores, uncompressed (`docker image inspect .Size`); layers come from
`docker history`, with the Dockerfile instruction that made each. With --docs, the block between
BEGIN and END below is rewritten in place (the rest of the file is left as it is); with --readme, the text
between README_BEGIN and README_END (one sentence); so the numbers in the documentation are always the
ones the last CI run measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path

BEGIN = "<!-- image-sizes:begin (written by .ci/docker.sh via .ci/image_report.py; do not edit by hand) -->"
END = "<!-- image-sizes:end -->"
README_BEGIN = "<!-- image-sizes:readme -->"
README_END = "<!-- /image-sizes:readme -->"


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


def replace_between(path: Path, begin: str, end: str, new: str) -> None:
    text = path.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"image_report: {path} has no '{begin}' ... '{end}' block")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(head + begin + new + end + tail)
    print(f"wrote the sizes into {path}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=Path)
    ap.add_argument("--readme", type=Path)
    ap.add_argument("images", nargs="+", help="LABEL=IMAGE[=NOTE]")
    a = ap.parse_args()
    rows, details, sentence = [], [], []
    for spec in a.images:
        label, ref, *note = spec.split("=", 2)
        m = measure(ref)
        print(f"{label} ({ref}): {gb(m['size'])} uncompressed ({m['size']} bytes), {m['n_layers']} layers")
        details.append(f"\n{label} (`{ref}`), five largest layers:\n\n| size | layer |\n| ---: | --- |")
        for size, what in m["layers"][:5]:
            print(f"  {gb(size):>9}  {what}")
            details.append(f"| {gb(size)} | `{what}` |")
        rows.append(f"| {label} | `{ref}` | {note[0] if note else ''} | **{gb(m['size'])}** |")
        sentence.append(f"{gb(m['size'])} for the {label} image")
    if a.docs:
        engine = docker("version", "--format", "{{.Server.Version}}").strip()
        block = "\n".join(
            [
                "",
                f"Measured by CI (`.ci/docker.sh`) on {dt.date.today().isoformat()}, Docker Engine {engine}: "
                "sizes uncompressed, as the engine stores them (`docker image inspect`).",
                "",
                "| flavour | image | base, torch | size |",
                "| --- | --- | --- | ---: |",
                *rows,
                *details,
                "",
            ]
        )
        replace_between(a.docs, BEGIN, END, block)
    if a.readme:
        replace_between(a.readme, README_BEGIN, README_END, " and ".join(sentence))
    return 0


if __name__ == "__main__":
    sys.exit(main())
