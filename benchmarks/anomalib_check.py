"""The outside check of issue 29: threecad's methods side by side with anomalib's, from a study.

Run the pairs as one study (matched backbones, input sizes and epochs: the adapter's cpu presets
match threecad's), then print the README's table from its run directories:

    threecad synth --out SYNTH --scale 0.02 --max-size 256 --seed 7
    OMP_NUM_THREADS=1 threecad bench --method anomalib:Patchcore,patchcore,anomalib:Padim,padim \\
        --preset cpu --root SYNTH --out S7
    .venv/bin/python benchmarks/anomalib_check.py S7 [S8 ...]

With several studies (the same pairs under other seeds), each method's mean moves from study to
study by what chance alone does; the table ends with that spread, against which a pair's gap is
read. Inference seconds are a category's test images over the harness's measured images/s.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

PAIRS = (("anomalib-Patchcore", "patchcore"), ("anomalib-Padim", "padim"), ("anomalib-Fastflow", "fastflow"),
         ("anomalib-ReverseDistillation", "rd"), ("anomalib-Draem", "draem"))
METRICS = (("i_auroc", "I-AUROC"), ("p_auroc", "P-AUROC"), ("au_pro", "AU-PRO"))


def records(run: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((run / "categories").glob("*.json"))}


def row_values(record: dict | None) -> list[float | None]:
    if record is None or record.get("status") != "ok":
        return [None] * (len(METRICS) + 2)
    t = record["timings"]
    return ([100 * record["metrics"][k] for k, _ in METRICS]
            + [t["fit_s"], record["n_test"] / t["infer_images_per_s"]])


def cell(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def pair_table(study: Path, theirs: str, ours: str) -> str:
    a, b = records(study / theirs), records(study / ours)
    head = " | ".join(f"{label} a | {label} t" for label in [m for _, m in METRICS] + ["fit s", "infer s"])
    lines = [f"**{theirs}** (a) vs **{ours}** (t), {study.name}", "",
             f"| category | {head} |", "|---|" + "---|" * (2 * (len(METRICS) + 2))]
    cats = sorted(set(a) | set(b))
    sums = [[0.0, 0.0] for _ in range(len(METRICS) + 2)]
    for cat in cats:
        va, vb = row_values(a.get(cat)), row_values(b.get(cat))
        for i, (x, y) in enumerate(zip(va, vb)):
            sums[i][0] += x or 0.0
            sums[i][1] += y or 0.0
        lines.append(f"| {cat} | " + " | ".join(f"{cell(x)} | {cell(y)}" for x, y in zip(va, vb)) + " |")
    n = max(len(cats), 1)
    lines.append("| Mean | " + " | ".join(f"**{cell(x / n)}** | **{cell(y / n)}**" for x, y in sums) + " |")
    return "\n".join(lines)


def means(run: Path) -> list[float | None]:
    recs = [row_values(r) for r in records(run).values()]
    if not recs or any(v[0] is None for v in recs):
        return [None] * len(METRICS)
    return [sum(v[i] for v in recs) / len(recs) for i in range(len(METRICS))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", type=Path, help="study folders (bench --method a,b --out S)")
    args = parser.parse_args()
    for study in args.studies:
        for theirs, ours in PAIRS:
            if (study / theirs).is_dir() and (study / ours).is_dir():
                print(pair_table(study, theirs, ours), end="\n\n")
    rows = []
    for name in sorted({p.name for s in args.studies for p in s.iterdir() if (p / "categories").is_dir()}):
        found = [means(s / name) for s in args.studies if (s / name / "categories").is_dir()]
        if len(found) > 1 and all(v[0] is not None for v in found):
            spread = [max(v[i] for v in found) - min(v[i] for v in found) for i in range(len(METRICS))]
            rows.append(f"| {name} | " + " | ".join(cell(s) for s in spread) + " |")
    if rows:
        print("Seed-to-seed spread of the mean (max - min over the studies), in points:\n")
        print("| method | " + " | ".join(m for _, m in METRICS) + " |")
        print("|---|" + "---|" * len(METRICS))
        print("\n".join(rows))

if __name__ == "__main__":
    main()
