"""A minimal MONAI Label 0.8.5 app, the peer for medlabel's interactive benchmark
(`scripts/bench-smartedit.sh` with BENCH_PEER=1): MONAI Label's own server, its own
`HistogramBasedGraphCut` scribbles task (from the pip package, with the radiology app's
settings), a DeepEdit task built from MONAI's deepedit transforms the way the
radiology sample app's DeepEdit task is (orientation to RAS, CT window, resize of the
whole volume to 128³, guidance signal, DynUNet, softmax/argmax, restore to the input
grid), and a 2D DeepGrow task built from MONAI's deepgrow transforms the way the
radiology app's `deepgrow_2d` is (1 mm in-plane, the clicked slice, a 256² crop around
the guidance, guidance signal, 2D BasicUNet, sigmoid, restored into the volume). Test
tooling only: no downloads, so the networks have seeded random weights (the timing,
not the mask, is what is compared).
"""

import torch
from monai.apps.deepedit.transforms import (
    AddGuidanceFromPointsDeepEditd,
    AddGuidanceSignalDeepEditd,
    DiscardAddGuidanced,
    ResizeGuidanceMultipleLabelDeepEditd,
)
from monai.apps.deepgrow.transforms import (
    AddGuidanceFromPointsd,
    AddGuidanceSignald,
    Fetch2DSliced,
    ResizeGuidanced,
    RestoreLabeld,
    SpatialCropGuidanced,
)
from monai.inferers import SimpleInferer
from monai.networks.nets import BasicUNet, DynUNet
from monai.transforms import (
    Activationsd,
    AsChannelLastd,
    AsDiscreted,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    Resized,
    ScaleIntensityRanged,
    Spacingd,
    SqueezeDimd,
    ToNumpyd,
    Transposed,
)
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.scribbles.infer import HistogramBasedGraphCut
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.transform.post import Restored

LABELS = {"spleen": 1, "liver": 2, "background": 0}
SPATIAL_SIZE = (128, 128, 128)


class DeepEdit(BasicInferTask):
    def __init__(self, network):
        super().__init__(
            path=None,
            network=network,
            type=InferType.DEEPEDIT,
            labels=LABELS,
            dimension=3,
            description="DeepEdit (peer benchmark)",
            input_key="image",
            output_label_key="pred",
            output_json_key="result",
            load_strict=False,
        )

    def pre_transforms(self, data=None):
        clicks = any(data and data.get(name) for name in LABELS)
        guidance = (
            [
                AddGuidanceFromPointsDeepEditd(ref_image="image", guidance="guidance", label_names=LABELS),
                Resized(keys="image", spatial_size=SPATIAL_SIZE, mode="area"),
                ResizeGuidanceMultipleLabelDeepEditd(guidance="guidance", ref_image="image"),
                AddGuidanceSignalDeepEditd(keys="image", guidance="guidance", number_intensity_ch=1),
            ]
            if clicks
            else [
                Resized(keys="image", spatial_size=SPATIAL_SIZE, mode="area"),
                DiscardAddGuidanced(keys="image", label_names=LABELS, number_intensity_ch=1),
            ]
        )
        return [
            LoadImaged(keys="image", reader="ITKReader", image_only=False),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
            ScaleIntensityRanged(keys="image", a_min=-175, a_max=250, b_min=0.0, b_max=1.0, clip=True),
            *guidance,
            EnsureTyped(keys="image"),
        ]

    def inferer(self, data=None):
        return SimpleInferer()

    def inverse_transforms(self, data=None):
        # The radiology app's choice: invert every pre-transform that can be inverted.
        return []

    def post_transforms(self, data=None):
        return [
            EnsureTyped(keys="pred"),
            Activationsd(keys="pred", softmax=True),
            AsDiscreted(keys="pred", argmax=True),
            SqueezeDimd(keys="pred", dim=0),
            ToNumpyd(keys="pred"),
            Restored(keys="pred", ref_image="image"),
        ]


class Deepgrow2D(BasicInferTask):
    """The radiology app's 2D DeepGrow pipeline: the clicked slice, depth first."""

    def __init__(self, network):
        super().__init__(
            path=None,
            network=network,
            type=InferType.DEEPGROW,
            labels=[],
            dimension=2,
            description="2D DeepGrow (peer benchmark)",
            load_strict=False,
        )

    def pre_transforms(self, data=None):
        return [
            LoadImaged(keys="image", image_only=False),
            Transposed(keys="image", indices=[2, 0, 1]),
            Spacingd(keys="image", pixdim=[1.0, 1.0], mode="bilinear"),
            AddGuidanceFromPointsd(ref_image="image", guidance="guidance", spatial_dims=2),
            Fetch2DSliced(keys="image", guidance="guidance"),
            EnsureChannelFirstd(keys="image", channel_dim="no_channel"),
            SpatialCropGuidanced(keys="image", guidance="guidance", spatial_size=(256, 256)),
            Resized(keys="image", spatial_size=(256, 256), mode="area"),
            ResizeGuidanced(guidance="guidance", ref_image="image"),
            NormalizeIntensityd(keys="image", subtrahend=208, divisor=388),
            AddGuidanceSignald(image="image", guidance="guidance"),
            EnsureTyped(keys="image"),
        ]

    def inferer(self, data=None):
        return SimpleInferer()

    # inverse_transforms stays MONAI Label's default (None: none): RestoreLabeld puts
    # the slice back, as the radiology app's DeepGrow task does.

    def post_transforms(self, data=None):
        return [
            EnsureTyped(keys="pred"),
            Activationsd(keys="pred", sigmoid=True),
            AsDiscreted(keys="pred", threshold=0.5),
            ToNumpyd(keys="pred"),
            RestoreLabeld(keys="pred", ref_image="image", mode="nearest"),
            AsChannelLastd(keys="pred"),
        ]


class PeerApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="medlabel-peer", version="0.8.5")

    def init_infers(self):
        torch.manual_seed(0)
        network = DynUNet(
            spatial_dims=3,
            in_channels=len(LABELS) + 1,
            out_channels=len(LABELS),
            kernel_size=[3, 3, 3, 3, 3, 3],
            strides=[1, 2, 2, 2, 2, [2, 2, 1]],
            upsample_kernel_size=[2, 2, 2, 2, [2, 2, 1]],
            norm_name="instance",
            deep_supervision=False,
            res_block=True,
        )
        deepgrow_2d = BasicUNet(spatial_dims=2, in_channels=3, out_channels=1,
                                features=(32, 64, 128, 256, 512, 32))
        return {
            "deepedit": DeepEdit(network),
            "deepgrow_2d": Deepgrow2D(deepgrow_2d),
            "Histogram+GraphCut": HistogramBasedGraphCut(
                intensity_range=(-300, 200, 0.0, 1.0, True),
                pix_dim=(2.5, 2.5, 5.0),
                lamda=1.0,
                sigma=0.1,
                num_bins=64,
                labels={"organ": 1},
            ),
        }

    def init_trainers(self):
        return {}

    def init_strategies(self):
        return {}

    def init_scoring_methods(self):
        return {}
