"""Write busi_heldout_ids.txt: the BUSI images held out as the "external" set of
busi_external_heldout.toml.

The rule: of the training split's benign and malignant images, 20 % of each class
(rounded), drawn with ``random.Random(0)`` from the ids sorted, leaving out every image
whose bytes occur under another id of BUSI (a held-out image must not have a copy the
models train on; the run would refuse it). The test split is not touched, so the
internal test split stays the study's.

This is a held-out part of the same BUSI collection (same hospital, scanners and
protocol), not a different site: it shows the machinery of external test sets, not
generalization to another site.

    python experiments/make_busi_heldout_ids.py      # writes experiments/busi_heldout_ids.txt
"""
from __future__ import annotations

import csv
import hashlib
import random
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUSI = HERE.parent.parent / "shared" / "data" / "busi"
OUT = HERE / "busi_heldout_ids.txt"
CLASSES = ("benign", "malignant")
FRACTION = 0.2


def main(seed: int = 0) -> None:
    rows = list(csv.DictReader(open(BUSI / "labels.csv", newline="")))
    digest = {r["id"]: hashlib.sha256((BUSI / r["path"]).read_bytes()).hexdigest() for r in rows}
    copies = Counter(digest.values())
    rng = random.Random(seed)
    held: list[str] = []
    for label in CLASSES:
        pool = sorted(r["id"] for r in rows if r["split"] == "train" and r["label"] == label)
        k = round(FRACTION * len(pool))
        held += sorted(rng.sample([i for i in pool if copies[digest[i]] == 1], k))
    header = ["# BUSI images held out of busi_external_heldout.toml's run as its external test set \"heldout\".",
              "# NOT a different site or scanner: a part of the same BUSI collection (see make_busi_heldout_ids.py:",
              f"# {FRACTION:.0%} of each class of the training split, random.Random({seed}), images with a byte-identical",
              "# copy left out)."]
    OUT.write_text("\n".join(header + held) + "\n")
    print(f"{len(held)} ids -> {OUT}")


if __name__ == "__main__":
    main()
