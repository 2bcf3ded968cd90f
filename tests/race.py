"""Two real ``capshard build`` processes into one ``--out`` at the same moment.

Shared by ``test_lock.py`` and by the measurement of how often the race goes wrong
(``python tests/race.py TRIALS`` prints the outcome of every trial of each kind).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from synth import comparable, flickr_token_file, write_images

N_IMAGES = 24
PER_SHARD = 2
#: The lines a build that lost the race may print, whole: the lock, or (once the winner
#: finished) the refusal to replace a finished build of other input or options.
REFUSALS = (
    "is in use by capshard build",
    "is in use by another capshard process",
    "holds a finished build of different input or options",
)


@dataclass(frozen=True)
class Inputs:
    """One image folder and two caption files over it: same images, other captions."""

    images: Path
    a: Path
    b: Path


def make_inputs(root: Path) -> Inputs:
    names = [f"{1000 + i}_race.jpg" for i in range(N_IMAGES)]
    write_images(root / "images", names)
    flickr_token_file(root / "a.token.txt", names, 2)
    lines = [f"{name}#{n}\tinput B describes image {i} for the {n}th time ." for i, name in enumerate(names)
             for n in range(2)]
    (root / "b.token.txt").write_text("\n".join(lines) + "\n")
    return Inputs(root / "images", root / "a.token.txt", root / "b.token.txt")


def command(inputs: Inputs, token: Path, out: Path, seed: int = 0) -> list[str]:
    return [sys.executable, "-m", "pipeline", "build", str(token), "--format", "flickr", "--images",
            str(inputs.images), "--max-images-per-shard", str(PER_SHARD), "--workers", "1", "--seed", str(seed),
            "--out", str(out)]


def race(first: list[str], second: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Start both commands back to back and wait for both."""
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in (first, second)]
    done = []
    for c, p in zip((first, second), procs, strict=True):
        stdout, stderr = p.communicate(timeout=240)
        done.append(subprocess.CompletedProcess(c, p.returncode, stdout, stderr))
    return done


def folder_bytes(out: Path) -> dict[str, bytes]:
    """Every file of a build folder that a finished build consists of."""
    return {p.name: comparable(p.name, p.read_bytes()) for p in sorted(out.iterdir())
            if p.is_file() and not p.name.startswith(".")}


def outcome(out: Path, runs: list[subprocess.CompletedProcess[str]], clean: dict[tuple[str, int], dict[str, bytes]]
            ) -> str:
    """``ok`` or what went wrong. ``clean`` maps (caption file, seed) to the bytes of its clean build:
    the folder must be byte for byte the clean build of the input and seed its manifest names."""
    import json

    from pipeline.verify import verify

    codes = [r.returncode for r in runs]
    if 0 not in codes:
        return f"no build succeeded: {[r.stderr.strip()[-200:] for r in runs]}"
    for r in runs:
        if r.returncode != 0:
            line = r.stderr.strip()
            if r.returncode != 1 or "\n" in line or not any(s in line for s in REFUSALS):
                return f"the losing build did not refuse in one line (exit {r.returncode}): {line[-300:]!r}"
    if not (out / "manifest.json").is_file():
        return "no manifest"
    manifest = json.loads((out / "manifest.json").read_text())
    named = (Path(manifest["source"]["path"]).name, manifest["options"]["seed"])
    report = verify(out)
    if not report.ok:
        return f"verify fails: {[p.message for p in report.problems][:2]}"
    if folder_bytes(out) != clean[named]:
        return f"manifest names {named} but the folder is not that build"
    return "ok"


def main(trials: int) -> None:  # pragma: no cover - a measurement, run by hand
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs = make_inputs(root)
        clean = {}
        for token, seed in ((inputs.a, 0), (inputs.b, 0), (inputs.a, 1)):
            out = root / f"clean-{token.stem}-{seed}"
            subprocess.run(command(inputs, token, out, seed), check=True, capture_output=True)
            clean[(token.name, seed)] = folder_bytes(out)
        refusals: dict[str, dict[str, int]] = {"inputs": {}, "seeds": {}}
        for kind in ("inputs", "seeds"):
            results = []
            for t in range(trials):
                out = root / f"{kind}-{t}"
                other = command(inputs, inputs.b, out) if kind == "inputs" else command(inputs, inputs.a, out, 1)
                runs = race(command(inputs, inputs.a, out), other)
                results.append(outcome(out, runs, clean))
                for r in runs:
                    if r.returncode:
                        how = next((s for s in REFUSALS if s in r.stderr), "other failure")
                        refusals[kind][how] = refusals[kind].get(how, 0) + 1
            bad = [r for r in results if r != "ok"]
            print(f"{kind}: {len(bad)}/{trials} wrong; losers: {refusals[kind]}", *(f"  {r}" for r in bad),
                  sep="\n", flush=True)


if __name__ == "__main__":  # pragma: no cover
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
