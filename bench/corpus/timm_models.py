"""timm: CNN architectures across its families, at small inputs."""

from functools import partial
from pathlib import Path

import torch

from corpus import Built, Entry
from corpus._export import built_from_torch

# name -> family; each family's members differ in the blocks the engine must handle.
MODELS = {
    "resnet18": "ResNet",
    "resnet50": "ResNet",
    "resnet50d": "ResNet-D",
    "resnet18d": "ResNet-D",
    "resnext50_32x4d": "ResNeXt",
    "seresnet50": "SE-ResNet",
    "seresnext26d_32x4d": "SE-ResNeXt",
    "ecaresnet26t": "ECA-ResNet",
    "skresnet18": "SK-ResNet",
    "resnest14d": "ResNeSt",
    "resnetv2_50": "ResNetV2",
    "res2net50_26w_4s": "Res2Net",
    "res2next50": "Res2Net",
    "regnetx_002": "RegNet",
    "regnety_004": "RegNet",
    "regnetz_005": "RegNet",
    "efficientnet_b0": "EfficientNet",
    "efficientnet_lite0": "EfficientNet",
    "tf_efficientnetv2_b0": "EfficientNetV2",
    "efficientnetv2_rw_t": "EfficientNetV2",
    "mobilenetv3_large_100": "MobileNetV3",
    "mobilenetv3_small_050": "MobileNetV3",
    "mobilenetv4_conv_small": "MobileNetV4",
    "mobilenetv4_hybrid_medium": "MobileNetV4",
    "ghostnet_100": "GhostNet",
    "ghostnetv2_100": "GhostNet",
    "repghostnet_050": "GhostNet",
    "rexnet_100": "ReXNet",
    "mixnet_s": "MixNet",
    "mnasnet_100": "MnasNet",
    "fbnetv3_b": "FBNetV3",
    "lcnet_050": "LCNet",
    "tinynet_a": "TinyNet",
    "hardcorenas_a": "HardCoReNAS",
    "densenet121": "DenseNet",
    "dpn68": "DPN",
    "dla34": "DLA",
    "hrnet_w18_small": "HRNet",
    "hrnet_w18_small_v2": "HRNet",
    "cspdarknet53": "CSPDarkNet",
    "cspresnet50": "CSPResNet",
    "cs3darknet_s": "CSPDarkNet",
    "darknet53": "DarkNet",
    "repvgg_a0": "RepVGG",
    "mobileone_s0": "MobileOne",
    "ese_vovnet19b_dw": "VoVNet",
    "ese_vovnet39b": "VoVNet",
    "selecsls42b": "SelecSLS",
    "convnext_atto": "ConvNeXt",
    "convnext_nano": "ConvNeXt",
    "convnextv2_atto": "ConvNeXtV2",
    "nf_resnet26": "NF-ResNet",
    "nf_regnet_b0": "NF-RegNet",
    "dm_nfnet_f0": "NFNet",
    "gernet_s": "GENet",
    "xception41": "Xception",
    "inception_v3": "Inception",
    "vgg11_bn": "VGG",
    "bat_resnext26ts": "BoTNet-like",
}
# Written as torch.export archives instead of ONNX, to cover that loader too.
PT2 = {"mobilenetv4_conv_small", "resnet18d", "regnety_004"}
QUICK = {
    "ghostnet_100",
    "rexnet_100",
    "mixnet_s",
    "dla34",
    "hrnet_w18_small",
    "repvgg_a0",
    "ese_vovnet19b_dw",
    "convnextv2_atto",
    "mobilenetv4_conv_small",
}
# Models whose stems or fixed-size blocks need more than the default input.
# VGG's 7x7 adaptive pooling exports only from an input that pools to it exactly (224).
SIZES = {
    "inception_v3": 128,
    "xception41": 128,
    "bat_resnext26ts": 256,  # its attention is built for this size: 128 fails an assert
    "hrnet_w18_small": 128,
    "vgg11_bn": 224,
}
DEFAULT_SIZE = 96


def _build(name: str, workdir: Path) -> Built:
    import timm

    torch.manual_seed(0)
    size = SIZES.get(name, DEFAULT_SIZE)
    kwargs = {"img_size": size} if name == "bat_resnext26ts" else {}
    model = timm.create_model(name, pretrained=False, **kwargs)
    fmt = "pt2" if name in PT2 else "onnx"
    return built_from_torch(model, (1, 3, size, size), workdir, name.replace("/", "_"), fmt=fmt)


def entries() -> list[Entry]:
    return [
        Entry(f"timm/{n}", "timm", fam, partial(_build, n), quick=n in QUICK)
        for n, fam in MODELS.items()
    ]
