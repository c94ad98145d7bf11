"""Every published ImageNet classification checkpoint of the four families, as :class:`~litevit.weights.Weights`.

URLs, top-1 and licences were read in the official READMEs and code named in each record's ``source`` (stored
copies, checked with the search tool). Only MobileViTv3's asset URLs could not be read anywhere: its README links
the release page and names the folders that hold ``checkpoint_ema_best.pt``; those records say ``confirmed=False``.
Not included: T2T-ViT-24 trained with Token Labeling (84.2 %), whose checkpoint carries a token-labeling head that
no litevit model has.
"""

from __future__ import annotations

import dataclasses

from ..registry import get_variant
from .records import Weights, register_weights

_LEVIT_SRC = "facebookresearch/LeViT README.md (model zoo table) and levit.py specification['weights']"
_LEVIT_HASH = (
    "the 8 hex digits ending the file name, in torch.hub's check_hash convention (sha256 prefix); DeiT's files on "
    "the same host are loaded with check_hash=True by their official code, LeViT's own code loads without the "
    "check: litevit verifies them as sha256 prefixes"
)
for _name, _file, _top1 in (
    ("levit_128s", "LeViT-128S-96703c44.pth", 76.6),
    ("levit_128", "LeViT-128-b88c2750.pth", 78.6),
    ("levit_192", "LeViT-192-92712e41.pth", 80.0),
    ("levit_256", "LeViT-256-13b5763e.pth", 81.6),
    ("levit_384", "LeViT-384-9bdaf2e2.pth", 82.6),
):
    register_weights(
        Weights(
            _name, "fb_dist_in1k", f"https://dl.fbaipublicfiles.com/LeViT/{_file}", "official", "deit",
            get_variant(_name).data, _top1, "Apache-2.0", _LEVIT_SRC,
            hash=_file.rsplit("-", 1)[1].removesuffix(".pth"), hash_kind="sha256-prefix", hash_note=_LEVIT_HASH,
            default=True,
        )
    )  # fmt: skip

_EFFVIT_SRC = (
    "microsoft/Cream EfficientViT/classification/README.md (model zoo; model/build.py downloads the same files "
    "from the EfficientViT_cream release); licence EfficientViT/LICENSE"
)
for _name, _top1 in (("m0", 63.2), ("m1", 68.4), ("m2", 70.8), ("m3", 73.4), ("m4", 74.3), ("m5", 77.1)):
    register_weights(
        Weights(
            f"efficientvit_{_name}", "r224_in1k",
            f"https://github.com/xinyuliu-jeffrey/EfficientViT_Model_Zoo/releases/download/v1.0/efficientvit_{_name}.pth",
            "official", "deit", get_variant(f"efficientvit_{_name}").data, _top1, "MIT", _EFFVIT_SRC, default=True,
        )
    )  # fmt: skip

_CVNETS = "https://docs-assets.developer.apple.com/ml-research/models"
_CVNETS_LICENCE = "Apple sample code licence (ml-cvnets LICENSE)"
_CVNETS_SRC = "apple/ml-cvnets docs/source/en/general/README-model-zoo.md"
for _name, _top1 in (("xxs", 69.0), ("xs", 74.7), ("s", 78.3)):
    register_weights(
        Weights(
            f"mobilevit_{_name}", "cvnets_in1k", f"{_CVNETS}/cvnets/classification/mobilevit_{_name}.pt", "official",
            "cvnets", get_variant(f"mobilevit_{_name}").data, _top1, _CVNETS_LICENCE,
            f"{_CVNETS_SRC}, 'MobileViTv1 (Legacy)' (results of CVNets v0.1)", default=True,
        )
    )  # fmt: skip

# width -> top-1 at 256 (in1k), 384 (in1k), 256 (in22k -> in1k), 384 (in22k -> in1k); None: not published
_V2 = {
    "050": ("0.5", 70.18, 72.14, None, None),
    "075": ("0.75", 75.56, 76.98, None, None),
    "100": ("1.0", 78.09, 79.68, None, None),
    "125": ("1.25", 79.65, 80.94, None, None),
    "150": ("1.5", 80.38, 81.5, 81.46, 82.6),
    "175": ("1.75", 80.84, 82.04, 81.94, 82.93),
    "200": ("2.0", 81.17, 82.17, 82.36, 83.41),
}
_V2_ROUTES = (
    ("cvnets_in1k", "imagenet1k/256x256", "in1k", "'MobileViTv2 (256x256)'"),
    ("cvnets_in1k_384", "imagenet1k/384x384", "in1k", "'MobileViTv2 (Trained on 256x256 and Finetuned on 384x384)'"),
    ("cvnets_in22k_ft_in1k", "imagenet21k_to_1k/256x256", "in22k_ft_in1k", "'MobileViTv2 (Trained on ImageNet-21k "
     "and Finetuned on ImageNet-1k 256x256)'"),
    ("cvnets_in22k_ft_in1k_384", "imagenet21k_to_1k/384x384", "in22k_ft_in1k", "'MobileViTv2 (Trained on "
     "ImageNet-21k and Finetuned on ImageNet-1k 384x384)'"),
)  # fmt: skip
for _width, (_multiplier, *_scores) in _V2.items():
    _variant = get_variant(f"mobilevitv2_{_width}")
    for (_tag, _folder, _pretrain, _table), _top1 in zip(_V2_ROUTES, _scores, strict=True):
        if _top1 is None:
            continue
        # 384: resize to 384 and centre-crop 384 (config/classification/finetune_higher_res_in1k/mobilevit_v2.yaml)
        _data = dataclasses.replace(_variant.data, img_size=384, crop_pct=1.0) if "384" in _folder else _variant.data
        register_weights(
            Weights(
                _variant.name, _tag,
                f"{_CVNETS}/cvnets-v2/classification/mobilevitv2/{_folder}/mobilevitv2-{_multiplier}.pt",
                "official", "cvnets", _data, _top1, _CVNETS_LICENCE, f"{_CVNETS_SRC}, {_table}", pretrain=_pretrain,
                default=_tag == "cvnets_in1k",
            )
        )  # fmt: skip

_V3_RELEASE = "https://github.com/micronDLA/MobileViTv3/releases/download/v1.0.0"
_V3_SRC = (
    "micronDLA/MobileViTv3 README.md (tables, folder names, 'checkpoint_ema_best.pt' in each folder); the README "
    "links only the v1.0.0 release page: the asset URL (<folder>.zip) is inferred, not read"
)
_V3_LICENCE = "Micron licence: personal, non-commercial use only"
for _name, _folder, _top1 in (
    ("mobilevitv3_xxs", "mobilevitv3_XXS_e300_7098", 70.98),
    ("mobilevitv3_xs", "mobilevitv3_XS_e300_7671", 76.7),
    ("mobilevitv3_s", "mobilevitv3_S_e300_7930", 79.3),
    ("mobilevitv3_xxs_l2", "mobilevitv3_XXS_L2_e300_7023", 70.23),
    ("mobilevitv3_xs_l2", "mobilevitv3_XS_L2_e300_7610", 76.1),
    ("mobilevitv3_s_l2", "mobilevitv3_S_L2_e300_7906", 79.06),
    ("mobilevitv3_050", "mobilevitv3_0_5_0", 72.33),
    ("mobilevitv3_075", "mobilevitv3_0_7_5", 76.55),
    ("mobilevitv3_100", "mobilevitv3_1_0_0", 78.64),
):
    register_weights(
        Weights(
            _name, "official_in1k", f"{_V3_RELEASE}/{_folder}.zip", "official", "cvnets", get_variant(_name).data,
            _top1, _V3_LICENCE, _V3_SRC, archive_member=f"{_folder}/checkpoint_ema_best.pt", confirmed=False,
            default=True,
        )
    )  # fmt: skip

_T2T_RELEASE = "https://github.com/yitu-opensource/T2T-ViT/releases/download/main"
_T2T_SRC = "yitu-opensource/T2T-ViT README.md (model tables); licence LICENSE (The Clear BSD License)"
for _name, _file, _top1 in (
    ("t2t_vit_7", "71.7_T2T_ViT_7.pth.tar", 71.7),
    ("t2t_vit_10", "75.2_T2T_ViT_10.pth.tar", 75.2),
    ("t2t_vit_12", "76.5_T2T_ViT_12.pth.tar", 76.5),
    ("t2t_vit_14", "81.5_T2T_ViT_14.pth.tar", 81.5),
    ("t2t_vit_19", "81.9_T2T_ViT_19.pth.tar", 81.9),
    ("t2t_vit_24", "82.3_T2T_ViT_24.pth.tar", 82.3),
    ("t2t_vit_t_14", "81.7_T2T_ViTt_14.pth.tar", 81.7),
    ("t2t_vit_t_19", "82.4_T2T_ViTt_19.pth.tar", 82.4),
    ("t2t_vit_t_24", "82.6_T2T_ViTt_24.pth.tar", 82.6),
):
    register_weights(
        Weights(
            _name, "official_in1k", f"{_T2T_RELEASE}/{_file}", "official", "timm", get_variant(_name).data, _top1,
            "BSD-3-Clause-Clear", _T2T_SRC, default=True,
        )
    )  # fmt: skip
register_weights(
    Weights(
        "t2t_vit_14", "official_in1k_384", f"{_T2T_RELEASE}/83.3_T2T_ViT_14.pth.tar", "official", "timm",
        dataclasses.replace(get_variant("t2t_vit_14").data, img_size=384, crop_pct=1.0), 83.3, "BSD-3-Clause-Clear",
        _T2T_SRC + "; the 384 evaluation crop is not stated: crop_pct 1.0 as for DeiT's 384 models",
    )
)  # fmt: skip
