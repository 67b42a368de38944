"""kill -9 during the second category, then `--resume`, for every registered method.

For each method: `threecad bench --method M --preset cpu --category ACC,AI` runs in a
subprocess and gets SIGKILL as soon as ACC's record is written (AI is running then);
`--resume` finishes the run; a separate uninterrupted run gives the reference. Checked:
the kill landed during AI (AI has no record yet), ACC's record and checkpoint are
byte-identical with the same mtime after the resume, and AI's metrics equal the
uninterrupted run's exactly. Not a test (it takes minutes per method); the suite runs the
same check for one method (tests/test_resume.py).

    .venv/bin/python benchmarks/kill_resume.py [--root DIR] [--method M ...] [--fast]
        [--set key=value ...] [--delay S] [--keep DIR]

Without --root a synthetic ACC+AI dataset is written (`threecad synth --scale 0.01
--max-size 128`). --fast adds image_size=64 and epochs=1 (where the config has epochs),
as the test does. Exit 1 when any check fails.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from threecad.registry import available_methods

FIRST, SECOND = "ACC", "AI"


def threecad(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "threecad", *args], env=env, capture_output=True, text=True)


def stamp(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def fast_sets(cls) -> list[str]:
    names = {f.name for f in dataclasses.fields(cls.config_class)}
    return ["image_size=64"] + (["epochs=1"] if "epochs" in names else [])


def one_method(name: str, sets: list[str], root: Path, work: Path, delay: float, env: dict[str, str]) -> dict:
    base = ["bench", "--method", name, "--root", str(root), "--preset", "cpu", "--device", "cpu",
            "--category", f"{FIRST},{SECOND}", "--pictures", "0"]
    for s in sets:
        base += ["--set", s]
    killed, whole = work / f"{name}-killed", work / f"{name}-whole"
    row: dict = {"method": name}

    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "threecad", *base, "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = killed / "categories" / f"{FIRST}.json"
    while not first.exists() and proc.poll() is None:
        time.sleep(0.01)
    if proc.poll() is not None:
        row["error"] = f"bench ended ({proc.returncode}) before {FIRST} finished: " + proc.stderr.read()[-300:]
        return row
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    row["first_s"] = time.monotonic() - t0
    row["killed_during_second"] = not (killed / "categories" / f"{SECOND}.json").exists()
    before = stamp(first), stamp(killed / "checkpoints" / f"{FIRST}.pt")

    t1 = time.monotonic()
    resumed = threecad(*base, "--out", str(killed), "--resume", env=env)
    row["resume_s"] = time.monotonic() - t1
    row["resume_exit"] = resumed.returncode
    if resumed.returncode != 0:
        row["error"] = resumed.stderr.strip().splitlines()[-1:]
        return row
    row["first_untouched"] = before == (stamp(first), stamp(killed / "checkpoints" / f"{FIRST}.pt"))
    row["skipped_message"] = f"{FIRST}: done before, skipped (--resume)" in resumed.stdout

    reference = threecad(*base, "--out", str(whole), env=env)
    if reference.returncode != 0:
        row["error"] = reference.stderr.strip().splitlines()[-1:]
        return row
    got = json.loads((killed / "results.json").read_text())["categories"][SECOND]["metrics"]
    want = json.loads((whole / "results.json").read_text())["categories"][SECOND]["metrics"]
    row["second_equal"] = got == want
    row["second_i_auroc"] = got.get("i_auroc")
    diffs = [abs(got[k] - want[k]) for k in want if isinstance(want[k], float) and isinstance(got.get(k), float)]
    row["max_abs_diff"] = max(diffs, default=0.0)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, help="dataset with ACC and AI (default: a small synthetic one)")
    ap.add_argument("--method", action="append", help="method(s) to check (default: every registered one)")
    ap.add_argument("--fast", action="store_true", help="image_size=64 and epochs=1, as the test")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra --set key=value")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds after ACC's record before the kill")
    ap.add_argument("--keep", type=Path, help="keep the run directories here (default: a temporary folder)")
    args = ap.parse_args()

    methods = available_methods()
    names = args.method or sorted(methods)
    work = args.keep or Path(tempfile.mkdtemp(prefix="kill-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, THREECAD_CACHE=str(work / "cache"))
    root = args.root
    if root is None:
        root = work / "data"
        made = threecad("synth", "--out", str(root), "--scale", "0.01", "--max-size", "128",
                        "--category", f"{FIRST},{SECOND}", env=env)
        if made.returncode != 0:
            print(made.stderr, file=sys.stderr)
            return 1
    print(f"dataset {root}; runs under {work}", flush=True)
    rows = []
    for name in names:
        cls = methods.get(name)
        if cls is None or isinstance(cls, Exception):
            rows.append({"method": name, "error": f"does not load: {cls}"})
            continue
        sets = (fast_sets(cls) if args.fast else []) + list(args.sets)
        row = one_method(name, sets, root, work, args.delay, env)
        rows.append(row)
        print(json.dumps(row), flush=True)

    checks = ("killed_during_second", "first_untouched", "skipped_message", "second_equal")
    print(f"\n| method | kill during {SECOND} | {FIRST} untouched | {FIRST} skipped | {SECOND} metrics equal "
          f"| {SECOND} I-AUROC | resume s |")
    print("|---|---|---|---|---|---|---|")
    ok = True
    for r in rows:
        if "error" in r:
            ok = False
            print(f"| {r['method']} | error: {r['error']} | | | | | |")
            continue
        ok &= all(r.get(c) for c in checks)
        auroc = r.get("second_i_auroc")
        print(f"| {r['method']} | " + " | ".join("yes" if r.get(c) else "NO" for c in checks)
              + f" | {'-' if auroc is None else f'{100 * auroc:.1f}'} | {r['resume_s']:.0f} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
