"""Scan every file of `docker save IMAGE` (streamed, nothing written to disk) for secret patterns.

    docker save IMAGE | python3 .ci/scan_layers.py PATTERNS_FILE

PATTERNS_FILE holds one fixed string a line (a canary, a token, CA certificate lines). Each member of the
saved archive (layer tars, image config, manifest), gzip-decompressed when it is compressed, is piped through
`grep -aqF -f PATTERNS_FILE`. Prints one line per layer (size, hit or not) and exits 1 when any member
holds a pattern, 2 on a read error, 0 otherwise.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zlib

CHUNK = 8 << 20


def scan_member(stream, patterns: str) -> tuple[bool, int]:
    """(hit, bytes scanned) for one archive member, read from `stream`."""
    grep = subprocess.Popen(["grep", "-aqF", "-f", patterns], stdin=subprocess.PIPE)
    assert grep.stdin is not None
    scanned, gunzip, first = 0, None, True
    try:
        while chunk := stream.read(CHUNK):
            if first:
                first = False
                if chunk[:2] == b"\x1f\x8b":
                    gunzip = zlib.decompressobj(16 + zlib.MAX_WBITS)
            data = gunzip.decompress(chunk) if gunzip else chunk
            scanned += len(data)
            grep.stdin.write(data)
        if gunzip:
            grep.stdin.write(gunzip.flush())
        grep.stdin.close()
    except BrokenPipeError:
        pass  # grep -q stops reading at its first match
    rc = grep.wait()
    if rc > 1:
        raise RuntimeError(f"grep failed with exit code {rc}")
    return rc == 0, scanned


def main() -> int:
    patterns = sys.argv[1]
    hits, members, total = [], 0, 0
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
        for member in tar:
            if not member.isfile() or member.size == 0:
                continue
            f = tar.extractfile(member)
            assert f is not None
            hit, scanned = scan_member(f, patterns)
            members += 1
            total += scanned
            if member.size > 1 << 20 or hit:
                print(f"  {member.name}: {scanned / 1e6:,.0f} MB{'  <-- HOLDS A SECRET PATTERN' if hit else ''}")
            if hit:
                hits.append(member.name)
    print(f"scanned {members} files of the saved image, {total / 1e9:.2f} GB uncompressed")
    if hits:
        print(f"secret patterns found in: {', '.join(hits)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (tarfile.TarError, OSError, RuntimeError) as exc:
        print(f"scan_layers: cannot read the saved image: {exc}", file=sys.stderr)
        sys.exit(2)
