"""Every stage on a Dask LocalCluster: extraction, Grad-CAM, `workbench run`, GPU routing, a killed worker.

The cluster's workers are separate processes, so what they compute travels through the
shared cache and stores exactly as on a real cluster; each result is compared with the
same work done locally.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from workbench.core.parallel import GPU, gpu_resources, unordered
from workbench.features.cache import FeatureCache
from workbench.features.distributed import DistributedExtractError, extract_on
from workbench.features.options import ExtractOptions
from workbench.search.options import Execution
from workbench.training.finetune import SmallValidationWarning

from _helpers import FAST_OPTIONS, TINY, run


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes; one offers a GPU (as a resource only: it runs on the CPU)."""
    from distributed import Nanny, Scheduler, SpecCluster

    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    worker = {"cls": Nanny, "options": {"nthreads": 1}}
    gpu = {"cls": Nanny, "options": {"nthreads": 1, "resources": {GPU: 1}}}

    with SpecCluster(scheduler=scheduler, workers={"cpu": worker, "gpu": gpu}, asynchronous=False) as c:
        yield c


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The local reference on one torch thread, as the workers run: Dask's nanny starts them
    with OMP_NUM_THREADS=1 (`distributed.nanny.pre-spawn-environ`), and a network's float
    reductions differ in the last bits between thread counts. Bit-identity holds at equal counts."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_workers_run_one_torch_thread(cluster):
    """What `one_torch_thread` assumes of the workers; if Dask changes it, the fixture must too."""
    assert set(unordered(_dask(cluster), _torch_threads, [(i,) for i in range(4)])) == {1}


def _torch_threads(_: int) -> int:
    import torch

    return torch.get_num_threads()


def _dask(cluster) -> Execution:
    return Execution(backend="dask", scheduler=cluster.scheduler_address)


def _where(_: int) -> str:
    from distributed import get_worker

    return get_worker().address


def _gpu_worker(cluster) -> str:
    info = cluster.scheduler_info["workers"]
    (address,) = [a for a, w in info.items() if w.get("resources", {}).get(GPU)]
    return address


# ---- core.parallel -------------------------------------------------------------------


def test_gpu_resources_of_a_device():
    assert gpu_resources(None) == gpu_resources("auto") == gpu_resources("cuda:1") == {GPU: 1}
    assert gpu_resources("cpu") is None


def test_gpu_units_run_only_on_the_gpu_worker(cluster):
    places = list(unordered(_dask(cluster), _where, [(i,) for i in range(6)], resources=gpu_resources("cuda")))
    assert set(places) == {_gpu_worker(cluster)}
    # Without resources the work spreads over both workers' processes.
    anywhere = list(unordered(_dask(cluster), _where, [(i,) for i in range(12)], resources=gpu_resources("cpu")))
    assert len(anywhere) == 12


def test_resources_no_worker_offers_do_not_hold_the_units(cluster):
    out = list(unordered(_dask(cluster), _where, [(i,) for i in range(3)], resources={"TPU": 1}))
    assert len(out) == 3


def test_a_units_error_reaches_the_caller(cluster):
    with pytest.raises(ZeroDivisionError):
        list(unordered(_dask(cluster), _divide, [(1, 0)], resources={GPU: 1}))


def _divide(a: int, b: int) -> float:
    return a / b


# ---- extraction ----------------------------------------------------------------------


def test_dask_extraction_equals_local_bit_for_bit(cluster, make_dataset, tmp_path):
    ds = make_dataset(10)
    local = run(ds.csv, [TINY], tmp_path / "local")
    options = ExtractOptions(**FAST_OPTIONS)
    fs = extract_on(_dask(cluster), ds.csv, [TINY], cache=tmp_path / "dask", options=options, progress=False,
                    chunk_size=3)
    assert fs.ids == local.ids and fs.labels == local.labels and fs.names == local.names
    for name in fs.names:
        assert fs[name].dtype == local[name].dtype
        assert np.array_equal(fs[name], local[name])
        assert fs.info[name].entry_key == local.info[name].entry_key
    rec = fs.record
    assert rec["distributed"]["chunks"] == 3 and rec["distributed"]["chunk_size"] == 4  # 3 rounded up to a batch
    assert rec["distributed"]["assembly_computed_rows"] == 0
    assert rec["computed_rows"] == local.record["computed_rows"] == {fs.names[0]: 10}
    assert FeatureCache(tmp_path / "dask").verify() == []
    # A second run on the cluster computes nothing.
    again = extract_on(_dask(cluster), ds.csv, [TINY], cache=tmp_path / "dask", options=options, progress=False,
                       chunk_size=3)
    assert sum(again.record["computed_rows"].values()) == 0
    assert np.array_equal(again[fs.names[0]], local[fs.names[0]])


def test_a_duplicate_image_does_not_shift_the_chunks_batches(cluster, make_dataset, tmp_path):
    """A local pass computes a byte-identical copy once, at its first row, so its later
    batches start one row earlier; chunks of distinct images keep those batches (a
    network's output may vary in the last bits with what else is in its batch)."""
    ds = make_dataset(13)
    ds.add_duplicate("img000", "img000_copy")
    ds.rows.insert(1, ds.rows.pop())  # the copy second: every later row of a local pass moves up one
    ds.write_csv()
    local = run(ds.csv, [TINY], tmp_path / "local")
    fs = extract_on(_dask(cluster), ds.csv, [TINY], cache=tmp_path / "dask", options=ExtractOptions(**FAST_OPTIONS),
                    progress=False, chunk_size=4)
    assert fs.record["distributed"]["chunks"] == 4  # 13 distinct images in chunks of 4
    for name in fs.names:
        assert np.array_equal(fs[name], local[name])
    assert np.array_equal(fs[fs.names[0]][fs.ids.index("img000_copy")], fs[fs.names[0]][fs.ids.index("img000")])


def test_extract_on_without_a_cluster_is_extract(make_dataset, tmp_path):
    ds = make_dataset(4)
    options = ExtractOptions(**FAST_OPTIONS)
    fs = extract_on(Execution(), ds.csv, [TINY], cache=tmp_path / "c", options=options, progress=False)
    assert "distributed" not in fs.record
    assert np.array_equal(fs[fs.names[0]], run(ds.csv, [TINY], tmp_path / "c")[fs.names[0]])
    with pytest.raises(ValueError, match="chunk_size = 0"):
        extract_on(Execution(), ds.csv, [TINY], cache=tmp_path / "c", options=options, chunk_size=0)


def test_workers_writing_elsewhere_is_named(cluster, make_dataset, tmp_path, monkeypatch):
    """A cache the workers do not share (here: each chunk task writes to another folder)."""
    import workbench.features.distributed as dist

    ds = make_dataset(4)
    real = dist._extract_chunk
    elsewhere = str(tmp_path / "elsewhere")
    monkeypatch.setattr(dist, "_extract_chunk",
                        lambda m, f, root, o, c, ft: real(m, f, elsewhere, o, c, ft))
    with pytest.raises(DistributedExtractError, match="shared file system"):
        extract_on(_dask(cluster), ds.csv, [TINY], cache=tmp_path / "c", options=ExtractOptions(**FAST_OPTIONS),
                   progress=False, chunk_size=2)


# ---- a killed worker -----------------------------------------------------------------


def _dies_once_mid_chunk(marker: str, manifest, features, root: str, options) -> dict:
    """Extract half the chunk, then (the first time only) kill this worker's process."""
    from workbench.features.distributed import _extract_chunk

    if not os.path.exists(marker):
        Path(marker).write_text("died")
        half = manifest.subset(list(manifest.ids)[: len(manifest) // 2])
        _extract_chunk(half, features, root, options, None)
        os._exit(1)
    return _extract_chunk(manifest, features, root, options, None)


@pytest.mark.slow
def test_a_killed_workers_chunk_is_retried_without_corruption(cluster, make_dataset, tmp_path):
    from workbench.data.manifest import Manifest

    ds = make_dataset(8)
    local = run(ds.csv, [TINY], tmp_path / "local")
    options = ExtractOptions(**FAST_OPTIONS)
    m = Manifest.load(ds.csv).validate(progress=False)
    root = str(tmp_path / "dask")
    chunks = [m.subset(m.ids[:4]), m.subset(m.ids[4:])]
    units = [(str(tmp_path / "died"), c, [TINY], root, options) for c in chunks]
    done = list(unordered(_dask(cluster), _dies_once_mid_chunk, units, resources={GPU: 1}))
    assert (tmp_path / "died").read_text() == "died" and len(done) == 2
    assert FeatureCache(root).verify() == []
    fs = run(ds.csv, [TINY], root)
    assert sum(fs.record["computed_rows"].values()) == 0  # everything came from the cluster
    assert np.array_equal(fs[fs.names[0]], local[fs.names[0]])


# ---- Grad-CAM ------------------------------------------------------------------------

TINY_FT = dict(epochs=1, batch_size=8, image_size=32, optimizer="adam", lr=1e-3, patience=0)


@pytest.fixture(scope="module")
def tiny_network(tmp_path_factory):
    """A tiny fine-tuned network (random start, one epoch) and the validated images."""
    from conftest import TinyDataset
    from workbench.data.manifest import Manifest
    from workbench.training.config import FineTuneConfig
    from workbench.training.finetune import fine_tune

    root = tmp_path_factory.mktemp("camnet")
    ds = TinyDataset(root / "ds")
    ds.root.mkdir(parents=True)
    ds.add_images(10)
    items = list(Manifest.load(ds.csv).validate(progress=False))
    warnings.simplefilter("ignore", SmallValidationWarning)  # two validation images: on purpose, for speed
    ft = fine_tune("timm/test_efficientnet", items[:6], items[6:8], ["benign", "malignant"],
                   FineTuneConfig(**TINY_FT), weights="random", root=root / "ft", device="cpu", progress=False)
    return ft.label, items, root / "ft"


def test_cam_on_dask_equals_local(cluster, tiny_network):
    from workbench.backbones.finetuned import using_root
    from workbench.baselines.cam import explain_on
    from workbench.baselines.explain import explain

    network, items, root = tiny_network
    with using_root(root):
        local = explain(items, network, target="true", batch_size=2)
        spread = explain_on(_dask(cluster), items, network, target="true", batch_size=2, chunk_size=3)
    assert spread.ids == local.ids and spread.labels == local.labels and spread.boxes == local.boxes
    for name in ("pred", "targets", "proba"):
        assert np.array_equal(getattr(spread, name), getattr(local, name)), name
    assert len(spread.maps) == len(local.maps) == 10
    for a, b in zip(spread.maps, local.maps):
        assert a.shape == b.shape and np.array_equal(a, b)
    assert spread.peak_in_box == local.peak_in_box


def test_cam_command_takes_execution_options(cluster, tiny_network, tmp_path, monkeypatch):
    from workbench.cli import main

    network, items, root = tiny_network
    monkeypatch.setenv("WORKBENCH_FINETUNED", str(root))
    manifest = Path(items[0].path).parents[1] / "labels.csv"
    args = ["cam", "--manifest", str(manifest), "--network", network, "--split", "all", "--grid-max", "4"]
    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    assert main([*args, "--out", str(tmp_path / "dask"), "--backend", "dask",
                 "--scheduler", cluster.scheduler_address]) == 0
    assert (tmp_path / "local" / "cam.csv").read_bytes() == (tmp_path / "dask" / "cam.csv").read_bytes()


# ---- `workbench extract` and `workbench run` -------------------------------------------


def test_extract_command_on_dask(cluster, make_dataset, tmp_path, capsys):
    from workbench.cli import main

    ds = make_dataset(6)
    local = run(ds.csv, [TINY], tmp_path / "local")
    args = ["extract", "--manifest", str(ds.csv), "--features", TINY, "--cache", str(tmp_path / "c"),
            "--image-size", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--quiet",
            "--save", str(tmp_path / "f.npz"), "--backend", "dask", "--scheduler", cluster.scheduler_address,
            "--chunk-size", "2"]
    assert main(args) == 0
    assert "2 chunk(s) of up to 4 rows" in capsys.readouterr().out
    with np.load(tmp_path / "f.npz", allow_pickle=False) as f:
        assert np.array_equal(f[TINY], local[TINY])


RUN_CONFIG = """
name = "tiny"
manifest = "{csv}"
classes = ["benign", "malignant"]
positive = "malignant"
out = "run"
cache = "cache"
finetuned = "finetuned"

[protocol]
cv = 2
inner_cv = 2
seed = 0
top_k = 1

[features]
specs = ["timm/test_efficientnet@random:pre_logits"]
image_size = 32
batch_size = 4

[sweep]
heads = ["logreg"]
grids = {{logreg = {{}}}}
ensembles = false
{execution}

[baselines]
names = ["tiny-dask"]
"""


def _tasks_done(cluster) -> int:
    """Tasks the cluster's scheduler has seen finish (computed into memory)."""
    return sum(dict(getattr(tp, "state_counts", {})).get("memory", 0)
               for tp in cluster.scheduler.task_prefixes.values())


def _records(run_dir: Path) -> list[dict]:
    """The records without what differs between any two runs (times, machine, versions)."""
    import json

    drop = ("seconds", "time", "started", "finished", "created", "environment", "host", "pid", "versions")
    out = []
    for line in (run_dir / "records.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.append({k: v for k, v in rec.items() if not any(d in k for d in drop)})
    return sorted(out, key=lambda r: json.dumps(r, sort_keys=True))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::workbench.training.finetune.SmallValidationWarning")
def test_workbench_run_on_dask_records_what_a_local_run_does(cluster, make_dataset, tmp_path, monkeypatch):
    from workbench.baselines.configs import BaselineSpec, register_baseline
    from workbench.cli import main
    from workbench.training.config import FineTuneConfig

    register_baseline(BaselineSpec("tiny-dask", "timm/test_efficientnet", FineTuneConfig(**TINY_FT),
                                   weights="random"), replace=True)
    ds = make_dataset(24)
    rows = [{**r, "split": "test" if k % 3 == 2 else "train"} for k, r in enumerate(ds.rows)]
    csv = ds.write_csv(rows, "labels2.csv")
    folders, done = {}, [_tasks_done(cluster)]
    dask = f'backend = "dask"\nscheduler = "{cluster.scheduler_address}"'
    for kind, execution in (("local", ""), ("dask", dask)):
        folder = tmp_path / kind
        folder.mkdir()
        (folder / "exp.toml").write_text(RUN_CONFIG.format(csv=csv, execution=execution))
        monkeypatch.chdir(folder)
        assert main(["run", str(folder / "exp.toml"), "--quiet", "--device", "cpu"]) == 0
        folders[kind] = folder
        done.append(_tasks_done(cluster))
    assert done[1] == done[0] and done[2] >= done[1] + 5  # only the dask run used the cluster
    local, spread = (folders[k] / "run" for k in ("local", "dask"))
    assert _records(spread) == _records(local) and len(_records(local)) >= 6
    preds = sorted(p.relative_to(local) for p in (local / "predictions").rglob("*") if p.is_file())
    assert preds and preds == sorted(p.relative_to(spread) for p in (spread / "predictions").rglob("*") if p.is_file())
    for p in preds:
        assert (local / p).read_bytes() == (spread / p).read_bytes(), p
    cams = sorted(p.name for p in (local / "gradcam").glob("*.npz"))
    assert cams and cams == sorted(p.name for p in (spread / "gradcam").glob("*.npz"))
    for name in cams:
        with np.load(local / "gradcam" / name, allow_pickle=False) as a, \
                np.load(spread / "gradcam" / name, allow_pickle=False) as b:
            assert sorted(a.files) == sorted(b.files)
            for k in a.files:
                assert np.array_equal(a[k], b[k]), (name, k)
    assert FeatureCache(folders["dask"] / "cache").verify() == []


# ---- the config ------------------------------------------------------------------------


def test_config_takes_backend_and_scheduler(tmp_path):
    from workbench.experiment import ExperimentConfig, with_execution

    def load(execution: str):
        (tmp_path / "x.toml").write_text(RUN_CONFIG.replace("tiny-dask", "lite0").format(csv="x.csv",
                                                                                            execution=execution))
        return ExperimentConfig.load(tmp_path / "x.toml")

    cfg = load('backend = "dask"\nscheduler = "tcp://10.0.0.5:8786"\nn_jobs = 4')
    assert cfg.execution == Execution(n_jobs=4, backend="dask", scheduler="tcp://10.0.0.5:8786")
    assert with_execution(cfg, backend="loky").execution == Execution(n_jobs=4, backend="loky")
    assert with_execution(cfg, scheduler="local").execution.scheduler == "local"
    assert with_execution(cfg) is cfg
    with pytest.raises(ValueError, match="sweep.backend"):
        load('backend = "spark"')
    with pytest.raises(ValueError, match="scheduler"):
        load('scheduler = "tcp://10.0.0.5:8786"')  # without backend = "dask"
    with pytest.raises(ValueError, match="scheduler"):
        with_execution(load(""), scheduler="local")


# ---- nested fine-tuning ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::workbench.training.finetune.SmallValidationWarning")
def test_nested_fine_tuning_on_dask_trains_the_local_networks(cluster, make_dataset, tmp_path):
    import torch

    from workbench.data.manifest import Manifest
    from workbench.evaluation.protocol import Protocol
    from workbench.training.config import FineTuneConfig
    from workbench.training.nested import fine_tune_nested

    ds = make_dataset(12)
    m = Manifest.load(ds.csv).validate(progress=False)
    kw = dict(protocol=Protocol(cv=2, inner_cv=2), weights="random", progress=False, device="cpu")
    local = fine_tune_nested("timm/test_efficientnet", m, FineTuneConfig(**TINY_FT), root=tmp_path / "a", **kw)
    before = _tasks_done(cluster)
    spread = fine_tune_nested("timm/test_efficientnet", m, FineTuneConfig(**TINY_FT), root=tmp_path / "b",
                              execution=_dask(cluster), **kw)
    assert _tasks_done(cluster) >= before + 3  # two folds and the test split, on the workers
    assert spread.nested_id == local.nested_id and set(spread.members) == set(local.members) == {"0", "1", "test"}
    for fold, member in local.members.items():
        assert spread.members[fold].weights_id == member.weights_id
        a, b = (torch.load(next(r.rglob(f"{member.weights_id}/weights.pth")), weights_only=True)
                for r in (tmp_path / "a", tmp_path / "b"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_runs_single_fine_tune_trains_on_the_cluster(cluster, make_dataset, tmp_path, monkeypatch):
    """`[features] nested = false` trains one network: on Dask, a cluster task (a GPU
    worker's when it trains on a GPU), the same network a local run trains."""
    import torch

    from workbench.backbones.finetuned import using_root
    from workbench.experiment import ExperimentConfig, fine_tune_stage, validate_inputs

    ds = make_dataset(12)
    dask = f'backend = "dask"\nscheduler = "{cluster.scheduler_address}"'
    labels = {}
    for kind, execution in (("local", ""), ("dask", dask)):
        text = RUN_CONFIG.format(csv=ds.csv, execution=execution).replace(
            "image_size = 32", 'image_size = 32\nfinetuned = ["tf_efficientnet_lite0"]\nnested = false').replace(
            'finetuned = "finetuned"', f'finetuned = "{kind}"').replace('"tiny-dask"', '"lite0"')
        (tmp_path / f"{kind}.toml").write_text(text + "\n[finetune]\nepochs = 1\nbatch_size = 8\nimage_size = 32\n")
        monkeypatch.chdir(tmp_path)
        cfg = ExperimentConfig.load(tmp_path / f"{kind}.toml")
        before = _tasks_done(cluster)
        with using_root(cfg.finetuned):
            manifest = validate_inputs(cfg, progress=False)[0]
            labels[kind] = fine_tune_stage(cfg, manifest, device="cpu", progress=False)["tf_efficientnet_lite0"]
        assert _tasks_done(cluster) == before + (kind == "dask")  # the one network, on a worker
    assert labels["dask"] == labels["local"]
    wid = labels["local"].split("@")[-1]
    a, b = (torch.load(tmp_path / k / "tf_efficientnet_lite0" / wid / "weights.pth", weights_only=True)
            for k in ("local", "dask"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_extract_on_local_backends_is_one_extract(make_dataset, tmp_path):
    """Only Dask gets chunks: locally torch's threads use every core already, and threads
    would build the seeded random network concurrently from torch's one generator."""
    ds = make_dataset(8)
    local = run(ds.csv, [TINY], tmp_path / "local")
    kw = dict(options=ExtractOptions(**FAST_OPTIONS), progress=False, chunk_size=4)
    for backend in ("loky", "threading"):
        fs = extract_on(Execution(n_jobs=2, backend=backend), ds.csv, [TINY], cache=tmp_path / backend, **kw)
        assert "distributed" not in fs.record and fs.record["computed_rows"] == {TINY: 8}
        assert np.array_equal(fs[TINY], local[TINY])


def _cuda_visible(_: int) -> tuple[str, str]:
    from distributed import get_worker

    return get_worker().name, os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")


@pytest.mark.slow
def test_a_local_cluster_on_a_gpu_machine_gives_each_gpu_one_worker(monkeypatch):
    """`--scheduler local` on a machine with GPUs (two here, as the parent's visible
    devices 5 and 7): one worker per GPU offers the resource and sees only its device;
    the others see none, so GPU units never pile onto one GPU."""
    from workbench.core import parallel

    monkeypatch.setattr(parallel, "_gpu_devices", lambda: ["5", "7"])
    execution = Execution(n_jobs=3, backend="dask", scheduler="local")
    with parallel.shared_cluster(execution):
        on_gpu = set(unordered(execution, _cuda_visible, [(i,) for i in range(6)], resources={GPU: 1}))
        anywhere = set(unordered(execution, _cuda_visible, [(i,) for i in range(12)]))
    assert on_gpu == {("gpu-5", "5"), ("gpu-7", "7")}
    assert ("cpu-2", "") in anywhere and anywhere <= on_gpu | {("cpu-2", "")}


def test_the_visible_gpus_follow_the_parents_cuda_visible_devices(monkeypatch):
    from workbench.core import parallel

    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 1")
    assert parallel._gpu_devices() == ["3", "1"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert parallel._gpu_devices() == ["0", "1"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert parallel._gpu_devices() == []


@pytest.mark.slow
def test_one_local_cluster_serves_every_stage_of_a_run():
    from workbench.core import parallel

    execution = Execution(n_jobs=1, backend="dask", scheduler="local")
    with parallel.shared_cluster(execution):
        (address,) = parallel._SHARED
        first = list(unordered(execution, _where, [(0,)], resources={GPU: 1}))
        second = list(unordered(execution, _where, [(1,)], resources={GPU: 1}))
        assert first == second  # the same single worker: no second cluster was started
    assert parallel._SHARED == []
    with parallel.shared_cluster(Execution()):  # nothing to share: nothing started
        assert parallel._SHARED == []
