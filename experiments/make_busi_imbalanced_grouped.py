"""Write the manifest of a deliberately imbalanced, grouped derivative of BUSI.

A stress test of the tables on data unlike the one they were built on (as a held-out
thyroid set with 11 benign of 66 test images and several images per patient was):
benign vs malignant, the test split's benign images cut to 12, and synthetic "patients"
of 2-3 images of one class and split, so CV is grouped and test statistics must account
for the clustering. BUSI publishes no patient ids: the groups are synthetic, formed from
neighbouring ids of one class and split. The byte-identical pair busi_benign_433 (test) /
busi_malignant_145 (train) is kept on purpose: the run must report it.

    python experiments/make_busi_imbalanced_grouped.py      # writes busi_imbalanced_grouped/labels.csv
    workbench run experiments/busi_imbalanced_grouped.toml
"""
from __future__ import annotations

import csv
import os
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUSI = HERE.parent.parent / "shared" / "data" / "busi"
OUT = HERE / "busi_imbalanced_grouped" / "labels.csv"
KEEP_TEST_BENIGN = 12
MUST_KEEP = {"busi_benign_433"}  # one half of the duplicate-content pair


def main(seed: int = 0) -> None:
    rows = list(csv.DictReader(open(BUSI / "labels.csv", newline="")))
    rows = [r for r in rows if r["label"] in ("benign", "malignant")]
    rng = random.Random(seed)
    test_benign = [r for r in rows if r["split"] == "test" and r["label"] == "benign"]
    kept = {r["id"] for r in test_benign if r["id"] in MUST_KEEP}
    others = [r["id"] for r in test_benign if r["id"] not in MUST_KEEP]
    kept |= set(rng.sample(others, KEEP_TEST_BENIGN - len(kept)))
    rows = [r for r in rows if not (r["split"] == "test" and r["label"] == "benign") or r["id"] in kept]
    # Synthetic patients: runs of 2-3 neighbouring ids within one (label, split).
    out = []
    for (label, split) in sorted({(r["label"], r["split"]) for r in rows}):
        part = sorted((r for r in rows if r["label"] == label and r["split"] == split), key=lambda r: r["id"])
        i, g = 0, 0
        while i < len(part):
            size = rng.choice((2, 3))
            for r in part[i:i + size]:
                out.append({**r, "group": f"{label}-{split}-p{g:03d}"})
            i, g = i + size, g + 1
    rel = os.path.relpath(BUSI, OUT.parent)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "mask_path", "label", "split", "group",
                    "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"])
        for r in sorted(out, key=lambda r: r["id"]):
            w.writerow([r["id"], f"{rel}/{r['path']}", f"{rel}/{r['mask_path']}" if r["mask_path"] else "",
                        r["label"], r["split"], r["group"],
                        r["bbox_x0"], r["bbox_y0"], r["bbox_x1"], r["bbox_y1"]])
    n = {(lab, s): sum(1 for r in out if r["label"] == lab and r["split"] == s)
         for lab in ("benign", "malignant") for s in ("train", "test")}
    print(f"wrote {OUT}: {len(out)} images, {len({r['group'] for r in out})} groups; {n}")


if __name__ == "__main__":
    main()
