"""Split points inside timm backbones: tail(head(x)) is the whole model, for every supported family."""
import pytest
import timm
import torch

from splitbench import ConfigError
from splitbench.models.split import SplitBackbone, resolve_split, split_points

BACKBONES = ["vit_tiny_patch16_224", "resnet18", "tf_efficientnet_lite0", "mobilenetv3_small_100", "convnext_atto",
             "swin_tiny_patch4_window7_224"]
# Swin runs channels-last inside timm; a narrow, shallow one keeps the test cheap (same code path)
KWARGS = {"swin_tiny_patch4_window7_224": {"embed_dim": 32, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 4, 8)}}


@pytest.fixture(scope="module", params=BACKBONES)
def backbone(request):
    torch.manual_seed(0)
    return timm.create_model(request.param, pretrained=False, num_classes=7, **KWARGS.get(request.param, {})).eval()


def test_tail_of_head_is_the_whole_model(backbone):
    x = torch.randn(2, 3, 96, 96) if not hasattr(backbone, "patch_embed") else torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        full = backbone(x)
        for point in split_points(backbone)[1:3] + split_points(backbone)[-1:]:
            split = SplitBackbone(backbone, point.name)
            feats = split.head(x)
            if point.tokens:
                assert feats.shape[-1] == point.channels
            else:  # (B, C, H, W) for every family, channels-last Swin included
                assert feats.shape[1] == point.channels and feats.shape[-1] == x.shape[-1] // point.reduction
                assert feats.shape[-2] == x.shape[-2] // point.reduction
            torch.testing.assert_close(split.tail(feats), full, rtol=1e-4, atol=1e-4)


def test_split_by_index_and_errors(backbone):
    first = split_points(backbone)[0]
    assert resolve_split(backbone, 0) == first
    with pytest.raises(ConfigError, match="no split point 'nowhere'; valid:"):
        resolve_split(backbone, "nowhere")
    with pytest.raises(ConfigError, match="out of range"):
        resolve_split(backbone, 99)


def test_unsupported_family_is_one_line():
    net = timm.create_model("regnetx_002", pretrained=False)
    with pytest.raises(ConfigError, match="cannot split a timm RegNet: supported backbones are"):
        SplitBackbone(net, 1)
