"""The registry over every backbone, with random weights: taps exist and have their declared dims."""
from __future__ import annotations

import pytest
import torch

from workbench.backbones import (
    CheckpointMismatchError,
    backbone_code,
    UnknownBackboneError,
    WeightsNotFoundError,
    get_backbone,
    list_backbones,
    load_backbone,
    resolve_weights,
)
from workbench.backbones.camlayers import family_cam_layer
from workbench.backbones.registry import family_code
from workbench.backbones.taps import graph_node_taps, pre_logits_taps

# The study's taps and dims (DESIGN.md); the registry must provide at least these.
EXPECTED = {
    "alexnet": {"fc6": 4096, "fc7": 4096},
    "vgg11": {"fc6": 4096, "fc7": 4096},
    "vgg16": {"fc6": 4096, "fc7": 4096},
    "vgg19": {"fc6": 4096, "fc7": 4096},
    "resnet18": {"avgpool": 512},
    "resnet34": {"avgpool": 512},
    "resnet50": {"avgpool": 2048},
    "inception_v3": {"avgpool": 2048},
    "densenet121": {"avgpool": 1024},
    "mobilenet_v3_large": {"avgpool": 960, "fc": 1280},
    "shufflenet_v2_x1_0": {"avgpool": 1024},
    "tf_efficientnet_lite0": {"avgpool": 1280},
    "tf_efficientnet_lite1": {"avgpool": 1280},
    "tf_efficientnet_lite2": {"avgpool": 1280},
}


def test_registry_holds_the_study_backbones():
    names = [s.name for s in list_backbones()]
    assert set(EXPECTED) <= set(names)
    for name, taps in EXPECTED.items():
        assert {t: s.dim for t, s in get_backbone(name).taps.items()} == taps


@pytest.mark.parametrize("name", [s.name for s in list_backbones()])
def test_every_tap_has_its_declared_shape(name):
    spec = get_backbone(name)
    lb = load_backbone(name, "random")
    assert lb.weights.is_random
    # The taps sit after global pooling, so a small input is enough to check dims, except
    # Inception-v3, whose stem needs at least 75 px.
    size = 80 if name == "inception_v3" else 64
    with torch.inference_mode():
        out = lb.model(torch.randn(2, 3, size, size))
    assert list(out) == list(spec.taps)
    for tap, feats in out.items():
        assert feats.shape == (2, spec.taps[tap].dim), (name, tap)
        assert torch.isfinite(feats).all()


def test_seed_networks_at_their_registered_input_size():
    # Input size and normalisation come from the weights' metadata.
    assert get_backbone("inception_v3").data_config().input_size == 299
    assert get_backbone("alexnet").data_config().input_size == 224
    assert get_backbone("alexnet").data_config().mean == pytest.approx((0.485, 0.456, 0.406))
    assert get_backbone("tf_efficientnet_lite2").data_config().input_size == 260
    assert get_backbone("tf_efficientnet_lite0").data_config().mean == pytest.approx((0.5, 0.5, 0.5))
    lb = load_backbone("inception_v3", "random")
    with torch.inference_mode():
        assert lb.model(torch.randn(1, 3, 299, 299))["avgpool"].shape == (1, 2048)


def test_fc_taps_are_after_relu():
    # fc6/fc7 are the study's fc1/fc2 *after* the ReLU: never negative.
    lb = load_backbone("alexnet", "random")
    with torch.inference_mode():
        out = lb.model(torch.randn(4, 3, 64, 64))
    assert (out["fc6"] >= 0).all() and (out["fc7"] >= 0).all()
    assert (out["fc6"] > 0).any()


def test_only_requested_taps_are_computed():
    lb = load_backbone("vgg11", "random", taps=["fc6"])
    with torch.inference_mode():
        out = lb.model(torch.randn(1, 3, 32, 32))
    assert list(out) == ["fc6"]
    # the extractor graph stops at fc6: the last classifier layers are not in it
    assert "classifier.6" not in dict(lb.model.body.named_modules())


def test_random_weights_are_seeded_and_marked():
    a = load_backbone("resnet18", "random")
    b = load_backbone("resnet18", "random")
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(a.model(x)["avgpool"], b.model(x)["avgpool"])
    assert a.weights.is_random and a.weights.id == "random"
    assert a.weights.digest == b.weights.digest


def test_any_timm_model_by_name():
    spec = get_backbone("timm/test_efficientnet")
    assert spec.family == "timm" and list(spec.taps) == ["pre_logits"]
    lb = load_backbone(spec, "random")
    with torch.inference_mode():
        out = lb.model(torch.randn(2, 3, 64, 64))
    assert out["pre_logits"].shape == (2, spec.taps["pre_logits"].dim)


def test_unknown_names_give_suggestions():
    with pytest.raises(UnknownBackboneError, match="Did you mean: resnet50"):
        get_backbone("resnet5")
    with pytest.raises(UnknownBackboneError, match="unknown timm model"):
        get_backbone("timm/not_a_model_xyz")
    with pytest.raises(KeyError, match="has no tap 'fc9'.*fc6, fc7"):
        get_backbone("alexnet").tap("fc9")


def test_missing_weights_file_says_which_file_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsNotFoundError) as e:
        resolve_weights(get_backbone("alexnet"))
    msg = str(e.value)
    assert "alexnet-owt-7be5be79.pth" in msg
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in msg
    assert "@random" in msg
    with pytest.raises(WeightsNotFoundError, match="nope.pth"):
        resolve_weights(get_backbone("resnet18"), str(tmp_path / "nope.pth"))
    with pytest.raises(KeyError, match="no weights 'IMAGENET9K'"):
        resolve_weights(get_backbone("resnet18"), "IMAGENET9K")


def test_weights_load_from_torch_home(tmp_path, monkeypatch):
    # A file placed where torchvision would have downloaded it is found offline.
    spec = get_backbone("resnet18")
    ckpt = tmp_path / "torch" / "hub" / "checkpoints" / spec.weights[spec.default_weights].filename
    ckpt.parent.mkdir(parents=True)
    src = load_backbone("resnet18", "random")
    torch.save(src.spec.build().state_dict(), ckpt)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    lb = load_backbone("resnet18")
    assert lb.weights.path == ckpt.resolve() and not lb.weights.is_random


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    bad = tmp_path / "resnet34.pth"
    torch.save(get_backbone("resnet34").build().state_dict(), bad)
    with pytest.raises(CheckpointMismatchError, match="does not fit backbone 'resnet18'.*unexpected"):
        load_backbone("resnet18", str(bad))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="cannot read weights file"):
        load_backbone("resnet18", str(junk))


# ---- per-backbone facts in the spec (issue 13.4): the values the code had before ----------

#: Table codes the name-prefix rule of search/candidates.py gave each built-in backbone.
CODES = {"alexnet": "A", "vgg11": "V", "vgg16": "V", "vgg19": "V", "resnet18": "R", "resnet34": "R",
         "resnet50": "R", "inception_v3": "I", "densenet121": "D", "mobilenet_v3_large": "M",
         "shufflenet_v2_x1_0": "S", "tf_efficientnet_lite0": "L", "tf_efficientnet_lite1": "L",
         "tf_efficientnet_lite2": "L"}
#: Grad-CAM layers the family rules of baselines/cam.py picked (module names).
CAM_LAYERS = {"alexnet": "features.11", "vgg11": "features.19", "vgg16": "features.29", "vgg19": "features.35",
              "resnet18": "layer4.1", "resnet34": "layer4.2", "resnet50": "layer4.2", "inception_v3": "Mixed_7c",
              "densenet121": "features", "mobilenet_v3_large": "features.16", "shufflenet_v2_x1_0": "conv5",
              "tf_efficientnet_lite0": "bn2", "tf_efficientnet_lite1": "bn2", "tf_efficientnet_lite2": "bn2"}


def _module_name(model, layer):
    return next(n for n, m in model.named_modules() if m is layer)


def test_every_builtin_backbone_declares_its_facts():
    assert {s.name for s in list_backbones()} == set(CODES) == set(CAM_LAYERS)
    for spec in list_backbones():
        assert spec.table_code == spec.code == CODES[spec.name]
        assert family_code(spec.name) == spec.code  # the old prefix rule agrees
        assert spec.tapper is (pre_logits_taps if spec.family == "timm" else graph_node_taps)


@pytest.mark.parametrize("name", sorted(CAM_LAYERS))
def test_spec_cam_layer_is_the_old_family_rule(name):
    spec = get_backbone(name)
    with torch.device("meta"):  # structure only
        model = spec.build()
    layer = spec.cam_target(model)
    assert _module_name(model, layer) == CAM_LAYERS[name]
    assert layer is family_cam_layer(model)  # the rule bare models (no spec) still get


def test_generic_timm_specs_get_family_facts_without_building_to_name_them():
    assert backbone_code("timm/convnext_tiny") == "C" and backbone_code("timm/resnet50") == "R"
    assert backbone_code("mynet") == "M" and backbone_code("") == "X"
    spec = get_backbone("timm/test_efficientnet")
    assert spec.table_code == "T" and spec.tapper is pre_logits_taps
    model = spec.build()
    assert spec.cam_target(model) is family_cam_layer(model)
