"""ResNet-GLAM: "All the attention you need: Global-local, spatial-channel attention for image
retrieval", Song, Han, Avrithis, WACV 2022, arXiv 2107.08000.

F = ResNet conv5 output; four attentions computed in parallel from F (§3.1-3.2), fused
(Eq. 7), then GeM, FC + batch norm and L2 normalisation (§3.4). ``GlamConfig.attention``
selects the variants of the paper's Table 4: the baseline without attention (GeM -> FC -> BN ->
L2 on F), one stream (+local, +global), or the full model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as Fn
from torch import nn

from glam.backbone import ResNetTrunk
from glam.config import GlamConfig
from glam.fusion import GlobalLocalFusion
from glam.gem import GeM
from glam.global_channel import GlobalChannelAttention
from glam.global_spatial import GlobalSpatialAttention
from glam.input_norm import InputNormalization
from glam.local_channel import LocalChannelAttention
from glam.local_spatial import LocalSpatialAttention


class GLAM(nn.Module):
    """Backbone -> global-local attention -> GeM -> FC -> BN -> L2 (a unit-norm descriptor).

    Only the modules of the configured variant exist: ``attention="none"`` has no attention
    module and no fusion in its graph, "local"/"global" only their stream's blocks.
    """

    def __init__(self, config: GlamConfig | None = None) -> None:
        super().__init__()
        cfg = config or GlamConfig()
        self.config = cfg
        c, c_reduced = cfg.channels, cfg.reduced_channels
        self.input_norm: InputNormalization | None = None
        if cfg.input_mean is not None and cfg.input_std is not None:
            self.input_norm = InputNormalization(cfg.input_mean, cfg.input_std)
        self.backbone = ResNetTrunk(cfg.backbone)
        if cfg.uses_local:
            self.local_channel = LocalChannelAttention(cfg.local_channel_kernel)
            self.local_spatial = LocalSpatialAttention(
                c, c_reduced, cfg.dilations, cfg.local_spatial_activation
            )
        if cfg.uses_global:
            self.global_channel = GlobalChannelAttention(
                cfg.global_channel_kernel, cfg.channel_softmax_scale
            )
            self.global_spatial = GlobalSpatialAttention(c, c_reduced, cfg.spatial_softmax_scale)
        self.fusion: GlobalLocalFusion | None = None
        if cfg.attention == "global-local":
            self.fusion = GlobalLocalFusion(3)
        elif cfg.attention != "none" and cfg.single_stream_fusion == "residual":
            self.fusion = GlobalLocalFusion(2)
        self.pool = GeM(cfg.gem_p, cfg.gem_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        # NOTE: not in paper: the FC has no bias since the batch norm after it has one
        # (fc_bias=True for converted whitening, which centres its input).
        self.fc = nn.Linear(c, cfg.dim, bias=cfg.fc_bias)
        self.bn = nn.BatchNorm1d(cfg.dim)
        # Provenance, set by the builder: where the weights came from and their sha256.
        self.weights_source = "random"
        self.weights_sha256 = ""

    def local_stream(self, f: torch.Tensor) -> torch.Tensor:
        """F^l (Eq. 1-2) from F: both (B, C, H, W)."""
        f_cl = self.local_channel(f)  # F_c^l, Eq. 1
        return self.local_spatial(f, f_cl)  # F^l, Eq. 2

    def global_stream(self, f: torch.Tensor) -> torch.Tensor:
        """F^g (Eq. 5-6) from F: both (B, C, H, W)."""
        f_cg = self.global_channel(f)  # F_c^g = F ⊙ G_c, Eq. 5
        g_s = self.global_spatial(f)  # G_s
        return f_cg * g_s + f_cg  # F^g, Eq. 6

    def forward_attention(self, f: torch.Tensor) -> torch.Tensor:
        """F^gl (Eq. 7), or the configured variant's feature map, from F: both (B, C, H, W)."""
        cfg = self.config
        if cfg.attention == "none":
            return f
        streams = []
        if cfg.uses_local:
            streams.append(self.local_stream(f))
        if cfg.uses_global:
            streams.append(self.global_stream(f))
        if self.fusion is None:  # a single stream, "stream" fusion: F^x alone
            return streams[0]
        return self.fusion(*streams, f)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """F^gl: (B, C, H/32, W/32) from ImageNet-normalised RGB images x: (B, 3, H, W)."""
        if self.input_norm is not None:
            x = self.input_norm(x)
        f = self.backbone(x)
        if self.config.attention == "none":
            return f  # the baseline: GeM pools the backbone's output directly
        return self.forward_attention(f)

    def forward_head(self, f_gl: torch.Tensor) -> torch.Tensor:
        """Unit-norm descriptors (B, dim) from F^gl; pooling and head run in fp32."""
        pooled = self.pool(f_gl.to(self.fc.weight.dtype))  # (B, C), fp32 under autocast
        with torch.autocast(device_type=f_gl.device.type, enabled=False):
            if self.config.head_prenorm:
                pooled = Fn.normalize(pooled, p=2.0, dim=-1)
            y = self.bn(self.fc(self.dropout(pooled)))  # (B, dim)
        return Fn.normalize(y, p=2.0, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
