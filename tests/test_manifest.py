"""Tests for workbench.data.manifest: CSV and folder manifests, validation, digests."""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workbench.data.images import file_sha256
from workbench.data.manifest import (
    BadRow,
    DuplicateImageWarning,
    Item,
    Manifest,
    ManifestError,
    ManifestWarning,
)

BUSI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "busi"


def write_png(path: Path, size: tuple[int, int] = (8, 6), value: int = 100) -> Path:
    """A tiny gray PNG with a gradient (so truncating it cuts real pixel data)."""
    w, h = size
    arr = (np.arange(w * h).reshape(h, w) * 7 + value) % 256
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8), "L").save(path)
    return path


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


HEADER = "id,path,label,split,group,bbox_x0,bbox_y0,bbox_x1,bbox_y1,mask_path,notes"


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """A CSV mixing good rows with one of every kind of bad row."""
    img = tmp_path / "images"
    for name in ["good1", "good2", "good3", "dup", "outside", "malformed", "badsplit", "badmask", "nobox"]:
        write_png(img / f"{name}.png", size=(8, 6))
    write_png(tmp_path / "masks" / "good1.png", size=(8, 6), value=0)
    (img / "zero.png").write_bytes(b"")
    full = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)).save(full, "PNG")
    data = full.getvalue()
    (img / "trunc.png").write_bytes(data[: len(data) // 2])
    (img / "text.png").write_text("not an image at all\n")
    return write_csv(
        tmp_path / "labels.csv",
        [
            HEADER,
            "good1,images/good1.png,benign,train,p1,1,1,5,5,masks/good1.png,first",  # 2
            "good2,images/good2.png,malignant,TEST,p2,,,,,,",  # 3
            "missing,images/missing.png,benign,train,,,,,,,",  # 4
            "zero,images/zero.png,benign,train,,,,,,,",  # 5
            "trunc,images/trunc.png,benign,train,,,,,,,",  # 6
            "text,images/text.png,malignant,val,,,,,,,",  # 7
            "unknown,images/good3.png,cat,train,,,,,,,",  # 8
            "good1,images/dup.png,benign,train,,,,,,,",  # 9
            "outside,images/outside.png,benign,train,,0,0,9,6,,",  # 10
            "malformed,images/malformed.png,benign,train,,1,2,x,4,,",  # 11
            "badsplit,images/badsplit.png,benign,training,,,,,,,",  # 12
            "badmask,images/badmask.png,benign,train,,,,,,masks/nope.png,",  # 13
            ",images/nobox.png,malignant,val,,,,,,,",  # 14: id defaults to the path
        ],
    )


EXPECTED_BAD = {
    4: "file not found",
    5: "empty file (0 bytes)",
    6: "truncated or corrupt image data",
    7: "not an image file",
    8: "unknown label 'cat' (classes: benign, malignant)",
    9: "duplicate id 'good1' (first on line 2)",
    10: "bounding box (0, 0, 9, 6) outside the image (8x6)",
    11: "non-numeric bounding box value bbox_x1='x'",
    12: "invalid split 'training' (expected train, val or test)",
    13: "mask masks/nope.png: file not found",
}


def test_parse_collects_row_problems_without_raising(mixed):
    m = Manifest.load(mixed, classes=["benign", "malignant"])
    assert {b.row for b in m.bad_rows} == {8, 9, 11, 12}  # the rest needs the files
    assert m.classes == ["benign", "malignant"]
    assert m.ids == ["good1", "good2", "missing", "zero", "trunc", "text", "outside", "badmask", "images/nobox.png"]
    good2 = m[1]
    assert good2.split == "test" and good2.group == "p2" and good2.box is None and good2.row == 3
    assert m[0].box == (1, 1, 5, 5) and m[0].mask_path == mixed.parent / "masks" / "good1.png"
    assert m[0].path == mixed.parent / "images" / "good1.png" and m[0].path.is_absolute()
    assert m[0].sha256 is None


def test_validate_lists_every_bad_row_at_once(mixed):
    m = Manifest.load(mixed, classes=["benign", "malignant"])
    with pytest.raises(ManifestError) as info:
        m.validate(n_jobs=3)
    err = info.value
    assert [b.row for b in err.bad_rows] == sorted(EXPECTED_BAD)
    for b in err.bad_rows:
        assert b.reason == EXPECTED_BAD[b.row]
    text = str(err).splitlines()
    assert text[0] == f"manifest {mixed.resolve()}: {len(EXPECTED_BAD)} bad rows"
    assert len(text) == 1 + len(EXPECTED_BAD)
    assert "  line 6 (id=trunc, path=images/trunc.png): truncated or corrupt image data" in text
    for row, reason in EXPECTED_BAD.items():
        assert any(line.startswith(f"  line {row} (") and line.endswith(reason) for line in text)
    assert err.source == mixed.resolve()


def test_skip_bad_keeps_good_rows_and_records_skipped(mixed):
    m = Manifest.load(mixed, classes=["benign", "malignant"]).validate(skip_bad=True)
    assert m.ids == ["good1", "good2", "images/nobox.png"]
    assert [(s.row, s.reason) for s in m.skipped] == sorted(EXPECTED_BAD.items())
    assert m.bad_rows == []
    for it in m:
        assert it.sha256 == file_sha256(it.path) and (it.width, it.height) == (8, 6)
    # Already clean: validating again neither raises nor forgets what was skipped.
    again = m.validate()
    assert again.ids == m.ids and len(again.skipped) == len(EXPECTED_BAD)


def test_skip_bad_with_nothing_left_still_raises(tmp_path):
    csv = write_csv(tmp_path / "m.csv", ["path,label", "a.png,x", "b.png,y"])
    with pytest.raises(ManifestError, match="no usable items left") as info:
        Manifest.load(csv).validate(skip_bad=True)
    assert [b.row for b in info.value.bad_rows] == [2, 3]


@pytest.mark.parametrize(
    "cells, reason",
    [
        ("1,2,,4", "incomplete bounding box (bbox_x1 empty)"),
        ("1,2,3.5,4", "bounding box value bbox_x1='3.5' is not an integer"),
        ("-1,0,3,4", "negative bounding box coordinate in (-1, 0, 3, 4)"),
        ("3,0,3,4", "empty bounding box (3, 0, 3, 4): need x1 > x0 and y1 > y0"),
        ("0,5,3,4", "empty bounding box (0, 5, 3, 4): need x1 > x0 and y1 > y0"),
        ("a,0,3,4", "non-numeric bounding box value bbox_x0='a'"),
    ],
)
def test_box_parse_errors(tmp_path, cells, reason):
    write_png(tmp_path / "a.png")
    csv = write_csv(tmp_path / "m.csv", ["path,label,bbox_x0,bbox_y0,bbox_x1,bbox_y1", f"a.png,x,{cells}"])
    m = Manifest.load(csv)
    assert m.bad_rows == [BadRow(2, "a.png", "a.png", reason)]


def test_integer_valued_box_text_is_accepted(tmp_path):
    write_png(tmp_path / "a.png")
    csv = write_csv(tmp_path / "m.csv", ["path,label,bbox_x0,bbox_y0,bbox_x1,bbox_y1", "a.png,x,1.0, 2 ,3,4"])
    assert Manifest.load(csv)[0].box == (1, 2, 3, 4)


def test_empty_path_and_label_and_several_reasons_per_row(tmp_path):
    csv = write_csv(tmp_path / "m.csv", ["id,path,label,split", "a,,,", "b,b.png,,nope"])
    m = Manifest.load(csv)
    assert m.bad_rows[0] == BadRow(2, "a", None, "empty path; empty label")
    assert m.bad_rows[1].reason == "empty label; invalid split 'nope' (expected train, val or test)"
    assert len(m) == 0


def test_require_box(tmp_path):
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png")
    csv = write_csv(
        tmp_path / "m.csv",
        ["path,label,bbox_x0,bbox_y0,bbox_x1,bbox_y1", "a.png,x,0,0,8,6", "b.png,y,,,,"],
    )
    assert len(Manifest.load(csv).validate()) == 2
    with pytest.raises(ManifestError) as info:
        Manifest.load(csv).validate(require_box=True)
    assert info.value.bad_rows == [BadRow(3, "b.png", "b.png", "no bounding box (needed for --input box)")]


def test_mask_problems(tmp_path):
    write_png(tmp_path / "a.png", size=(8, 6))
    write_png(tmp_path / "b.png", size=(8, 6))
    write_png(tmp_path / "ma.png", size=(4, 3))
    (tmp_path / "mb.png").write_text("junk")
    csv = write_csv(tmp_path / "m.csv", ["path,label,mask_path", "a.png,x,ma.png", "b.png,x,mb.png"])
    with pytest.raises(ManifestError) as info:
        Manifest.load(csv).validate()
    assert [b.reason for b in info.value.bad_rows] == [
        "mask ma.png is 4x3 but the image is 8x6",
        "mask mb.png: not an image file",
    ]


# ---- CSV details -------------------------------------------------------------------------


def test_classes_default_to_sorted_labels_and_extras_are_kept(tmp_path):
    for n in "abc":
        write_png(tmp_path / "img" / f"{n}.png")
    csv = write_csv(
        tmp_path / "m.csv",
        ["path,label,notes,width", "img/a.png,zeta,x,1", "img/b.png,alpha,,2", "img/c.png,zeta,z,3"],
    )
    m = Manifest.load(csv)
    assert m.classes == ["alpha", "zeta"]
    assert m.labels == ["zeta", "alpha", "zeta"] and m.ids == ["img/a.png", "img/b.png", "img/c.png"]
    assert [it.row for it in m] == [2, 3, 4]
    df = m.validate().to_frame()
    assert list(df["notes"]) == ["x", "", "z"]
    assert str(df["bbox_x0"].dtype) == "Int64" and df["width"].tolist() == [8, 8, 8]


def test_line_numbers_with_bom_blank_lines_and_multiline_cells(tmp_path):
    write_png(tmp_path / "a.png")
    text = 'Path,LABEL,note\r\n\r\na.png,x,"two\nlines"\r\nmissing.png,,\r\n'
    (tmp_path / "m.csv").write_bytes("\ufeff".encode() + text.encode())
    m = Manifest.load(tmp_path / "m.csv")
    assert m[0].row == 3
    assert m.bad_rows == [BadRow(5, "missing.png", "missing.png", "empty label")]


def test_absolute_paths_and_parent_dirs(tmp_path):
    outside = write_png(tmp_path / "elsewhere" / "o.png")
    sub = tmp_path / "manifests"
    sub.mkdir()
    write_png(tmp_path / "shared.png")
    csv = write_csv(sub / "m.csv", ["path,label", f"{outside},x", "../shared.png,y"])
    m = Manifest.load(csv)
    assert m[0].path == outside and m[0].id == outside.as_posix()
    assert m[1].path == tmp_path / "shared.png" and m[1].id == "../shared.png"
    assert len(m.validate()) == 2


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "manifest not found"),
        ("", "empty CSV"),
        ("path,label\n", "no data rows"),
        ("path,klass\na.png,x\n", "missing required column(s) label (found: path, klass)"),
        ("path,label,path\na.png,x,b.png\n", "duplicate column 'path'"),
        ("path,label,bbox_x0,bbox_y0\na.png,x,1,2\n", "missing bbox_x1, bbox_y1"),
    ],
)
def test_whole_file_problems(tmp_path, content, message):
    path = tmp_path / "m.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ManifestError) as info:
        Manifest.load(path)
    assert message in str(info.value) and info.value.bad_rows == []


def test_non_utf8_csv(tmp_path):
    (tmp_path / "m.csv").write_bytes(b"path,label\n\xff\xfe.png,x\n")
    with pytest.raises(ManifestError, match="not UTF-8"):
        Manifest.load(tmp_path / "m.csv")


def test_classes_argument_is_checked(tmp_path):
    csv = write_csv(tmp_path / "m.csv", ["path,label", "a.png,x"])
    with pytest.raises(TypeError):
        Manifest.load(csv, classes="x")
    with pytest.raises(ValueError, match="duplicate"):
        Manifest.load(csv, classes=["x", "x"])


# ---- Manifest object ---------------------------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> Path:
    for i in range(4):
        write_png(tmp_path / f"{i}.png", value=10 * i)
    return write_csv(
        tmp_path / "m.csv",
        ["id,path,label,split,group", "a,0.png,x,train,g1", "b,1.png,y,train,g1", "c,2.png,x,test,g2", "d,3.png,y,val,g3"],
    )


def test_container_protocol_and_subset(small):
    m = Manifest.load(small)
    assert len(m) == 4 and [it.id for it in m] == ["a", "b", "c", "d"] and m[-1].id == "d"
    assert isinstance(m[0], Item)
    s = m.subset(["c", "a"])
    assert s.ids == ["c", "a"] and s.classes == ["x", "y"] and s.source == m.source
    with pytest.raises(KeyError, match="'zz'"):
        m.subset(["a", "zz"])
    with pytest.raises(ValueError, match="duplicates"):
        m.subset(["a", "a"])
    assert "4 items" in repr(m)


def test_digest(small, tmp_path):
    m = Manifest.load(small)
    with pytest.raises(ValueError, match="validate"):
        m.digest()
    d = m.validate().digest()
    assert d == Manifest.load(small).validate(n_jobs=1).digest()
    assert len(d) == 64
    assert m.subset(["b", "a", "c", "d"]).validate().digest() != d  # order matters
    write_png(tmp_path / "0.png", value=99)  # same name, new bytes
    assert Manifest.load(small).validate().digest() != d
    relabelled = small.read_text().replace("a,0.png,x", "a,0.png,y")
    (tmp_path / "m2.csv").write_text(relabelled)
    assert Manifest.load(tmp_path / "m2.csv").validate().digest() != Manifest.load(small).validate().digest()


def test_validate_progress_bar(small, capsys):
    assert len(Manifest.load(small).validate(progress=True, n_jobs=0)) == 4
    assert "checking images" in capsys.readouterr().err


def test_manifest_error_pickles(tmp_path):
    err = ManifestError(tmp_path / "m.csv", [BadRow(3, "a", "a.png", "file not found")])
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.bad_rows == err.bad_rows and back.source == err.source
    assert str(err).splitlines()[1] == "  line 3 (id=a, path=a.png): file not found"


# ---- folders -------------------------------------------------------------------------------


def test_folder_by_class(tmp_path):
    root = tmp_path / "ds"
    write_png(root / "malignant" / "m1.PNG")
    write_png(root / "benign" / "b2.png")
    write_png(root / "benign" / "sub" / "b1.png")
    write_png(root / "benign" / ".hidden.png")
    write_png(root / "benign" / ".cache" / "x.png")
    write_png(root / "loose.png")  # not in a class folder
    (root / "benign" / "notes.txt").write_text("x")
    (root / ".git").mkdir()
    m = Manifest.load(root)
    assert m.source == root and m.classes == ["benign", "malignant"]
    assert m.ids == ["benign/b2.png", "benign/sub/b1.png", "malignant/m1.PNG"]
    assert m.labels == ["benign", "benign", "malignant"]
    assert [it.row for it in m] == [1, 2, 3] and all(it.split is None for it in m)
    assert len(m.validate()) == 3


def test_folder_with_splits(tmp_path):
    root = tmp_path / "ds"
    write_png(root / "train" / "a" / "1.png")
    write_png(root / "train" / "b" / "2.png")
    write_png(root / "Val" / "a" / "3.png")
    write_png(root / "test" / "b" / "4.png")
    write_png(root / "train" / "stray.png")
    m = Manifest.from_folder(root)
    assert [(it.id, it.label, it.split) for it in m] == [
        ("Val/a/3.png", "a", "val"),
        ("test/b/4.png", "b", "test"),
        ("train/a/1.png", "a", "train"),
        ("train/b/2.png", "b", "train"),
    ]
    assert m.classes == ["a", "b"]


def test_folder_unknown_class_and_layout_errors(tmp_path):
    root = tmp_path / "ds"
    write_png(root / "a" / "1.png")
    write_png(root / "z" / "2.png")
    m = Manifest.load(root, classes=["a", "b"])
    assert m.ids == ["a/1.png"]
    assert m.bad_rows == [BadRow(2, "z/2.png", "z/2.png", "unknown label 'z' (classes: a, b)")]
    with pytest.raises(ManifestError) as info:
        m.validate()
    assert "  item 2 (id=z/2.png, path=z/2.png): unknown label 'z'" in str(info.value)

    write_png(root / "train" / "a" / "3.png")
    with pytest.raises(ManifestError, match="mixes split folders"):
        Manifest.load(root)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ManifestError, match="no image files found"):
        Manifest.load(tmp_path / "empty")
    with pytest.raises(ManifestError, match="manifest not found"):
        Manifest.load(tmp_path / "nowhere")


# ---- real data -------------------------------------------------------------------------------


def test_busi_labels_csv():
    if not (BUSI / "labels.csv").is_file():
        pytest.skip(f"BUSI data not found at {BUSI}")
    m = Manifest.load(BUSI / "labels.csv")
    assert len(m) == 780 and m.bad_rows == []
    assert m.classes == ["benign", "malignant", "normal"]
    assert {it.split for it in m} == {"train", "test"}
    assert all((it.box is None) == (it.label == "normal") for it in m)

    normal = [i for i in m.ids if m[m.ids.index(i)].label == "normal"][:3]
    s = m.subset(m.ids[:20] + normal).validate(n_jobs=4)
    assert len(s) == 23 and s.bad_rows == [] and s.skipped == []
    for it in s:
        assert it.width is not None and it.height is not None
        assert max(it.width, it.height) <= 256
        assert it.sha256 == file_sha256(it.path)
        if it.box is not None:
            x0, y0, x1, y1 = it.box
            assert 0 <= x0 < x1 <= it.width and 0 <= y0 < y1 <= it.height
    first = s[0]
    assert first.id == "busi_benign_001" and first.box == (132, 61, 154, 73) and first.row == 2
    assert "roi_path" in s.to_frame().columns

    binary = Manifest.load(BUSI / "labels.csv", classes=["benign", "malignant"])
    assert len(binary) == 647 and len(binary.bad_rows) == 133
    assert all("unknown label 'normal'" in b.reason for b in binary.bad_rows)


# ---- label hygiene and duplicate images ---------------------------------------------------


def test_label_whitespace_is_stripped_with_a_warning(tmp_path):
    for n in "abc":
        write_png(tmp_path / f"{n}.png", value=ord(n))
    csv = write_csv(tmp_path / "m.csv", ["path,label", "a.png, benign", "b.png,benign ", "c.png,malignant"])
    with pytest.warns(ManifestWarning, match=r"2 labels \(line 2 ' benign', line 3 'benign '\)"):
        m = Manifest.load(csv)
    assert m.classes == ["benign", "malignant"] and m.labels == ["benign", "benign", "malignant"]


def test_labels_differing_only_in_case_are_bad_rows(tmp_path):
    for n in "abcd":
        write_png(tmp_path / f"{n}.png", value=ord(n))
    lines = ["path,label", "a.png,benign", "b.png,Benign", "c.png,benign", "d.png,malignant"]
    m = Manifest.load(write_csv(tmp_path / "m.csv", lines))
    # The most frequent spelling is the class; the other is a bad row, not a third class.
    assert m.classes == ["benign", "malignant"] and m.ids == ["a.png", "c.png", "d.png"]
    assert [(b.row, b.reason) for b in m.bad_rows] == [
        (3, "label 'Benign' differs only in case from 'benign' (2 rows); use one spelling")]
    with pytest.raises(ManifestError, match=r"line 3 \(id=b.png, path=b.png\): label 'Benign' differs only in case"):
        m.validate()
    # With classes given, the given spelling is meant.
    m = Manifest.load(write_csv(tmp_path / "m.csv", lines), classes=["benign", "malignant"])
    assert [(b.row, b.reason) for b in m.bad_rows] == [
        (3, "label 'Benign' differs only in case from class 'benign'")]


@pytest.mark.parametrize("value", ["NaN", "nan", "None", "null", "NULL", "N/A", "NA", "<NA>", "#N/A"])
def test_null_like_labels_are_bad_rows(tmp_path, value):
    for n in "ab":
        write_png(tmp_path / f"{n}.png", value=ord(n))
    csv = write_csv(tmp_path / "m.csv", ["path,label", "a.png,benign", f"b.png,{value}"])
    m = Manifest.load(csv)
    assert m.classes == ["benign"]
    assert [(b.row, b.reason) for b in m.bad_rows] == [(3, f"label {value!r} reads as a missing value")]
    # A class named on purpose is accepted.
    assert Manifest.load(csv, classes=["benign", value]).bad_rows == []


def test_folder_labels_are_checked_too(tmp_path):
    write_png(tmp_path / "ds" / "benign" / "a.png", value=1)
    write_png(tmp_path / "ds" / "benign" / "b.png", value=2)
    write_png(tmp_path / "ds" / "BENIGN" / "c.png", value=3)
    write_png(tmp_path / "ds" / "nan" / "d.png", value=4)
    m = Manifest.load(tmp_path / "ds")
    assert m.classes == ["benign"]
    assert sorted(b.reason.split(" differs")[0].split(" reads")[0] for b in m.bad_rows) == ["label 'BENIGN'",
                                                                                             "label 'nan'"]


@pytest.fixture
def with_copies(tmp_path: Path) -> Path:
    """x == y (labels and splits differ), p == q == r (same label, train), z alone."""
    write_png(tmp_path / "x.png", value=1)
    (tmp_path / "y.png").write_bytes((tmp_path / "x.png").read_bytes())
    write_png(tmp_path / "p.png", value=2)
    for n in "qr":
        (tmp_path / f"{n}.png").write_bytes((tmp_path / "p.png").read_bytes())
    write_png(tmp_path / "z.png", value=3)
    return write_csv(tmp_path / "m.csv", [
        "id,path,label,split", "x,x.png,benign,test", "p,p.png,benign,train", "y,y.png,malignant,train",
        "q,q.png,benign,train", "z,z.png,malignant,train", "r,r.png,benign,train"])


def test_duplicate_images_are_found_and_warned_about(with_copies):
    m = Manifest.load(with_copies)
    with pytest.raises(ValueError, match="validate"):
        m.duplicates()
    with pytest.warns(DuplicateImageWarning) as caught:
        v = m.validate()
    text = str(caught[0].message)
    assert "2 images are stored under more than one id" in text and "1 with conflicting" in text
    assert "x (benign, test) = y (malignant, train): labels differ, crosses train/test" in text
    assert "p (benign, train) = q (benign, train) = r (benign, train): same label and split" in text
    groups = v.duplicates()
    assert [g.ids for g in groups] == [("x", "y"), ("p", "q", "r")]
    assert [(g.conflicting_labels, g.crosses_test, g.conflict) for g in groups] == [(True, True, True),
                                                                                    (False, False, False)]
    assert groups[0].to_dict()["labels"] == ["benign", "malignant"] and groups[0].rows == (2, 4)
    # Conflicting groups go entirely, the others keep their first copy.
    kept, dropped = v.drop_duplicates()
    assert dropped == ["x", "y", "q", "r"] and kept.ids == ["p", "z"] and kept.duplicates() == []
    # Same label, one copy in test: the copies would leak test into training, so all go.
    clean = v.subset(["p", "q", "z"])
    assert clean.drop_duplicates()[0].ids == ["p", "z"]


def test_busi_byte_identical_images_with_different_labels():
    if not (BUSI / "labels.csv").is_file():
        pytest.skip(f"BUSI data not found at {BUSI}")
    m = Manifest.load(BUSI / "labels.csv")
    pair = m.subset(["busi_benign_433", "busi_malignant_145", "busi_benign_001"])
    with pytest.warns(DuplicateImageWarning, match=r"busi_benign_433 \(benign, test\) = busi_malignant_145 "
                                                   r"\(malignant, train\): labels differ, crosses train/test"):
        v = pair.validate(n_jobs=1)
    (g,) = v.duplicates()
    assert g.ids == ("busi_benign_433", "busi_malignant_145") and g.conflict
