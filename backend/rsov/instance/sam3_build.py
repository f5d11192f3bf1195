"""The one place SAM 3 image models are built: the ``sam3`` package's modules, composed at a size given as data.

``sam3.build_sam3_image_model`` builds only the published size and precomputes positional encodings on
CUDA, so it cannot run on a CPU-only machine. ``build_sam3`` composes the same modules the same way (the
detector only: no video tracker), at ``SAM3_FULL`` (the published architecture, which ``facebook/sam3``'s
``sam3.pt`` loads into) or at a reduced width and depth (``SAM3_TINY``, random weights for tests).
Checkpoints are SAM 3's own format: the detector's weights under ``detector.``, optionally inside
``{"model": ...}``; ``save_checkpoint`` writes that format, ``load_checkpoint`` reads it strictly.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError


@dataclass(frozen=True)
class Sam3Size:
    """Widths and depths of a SAM 3 detector (the published values are ``SAM3_FULL``)."""

    name: str
    image_size: int = 1008  # the processor's square input, px
    patch_size: int = 14
    pretrain_image_size: int = 336  # of the ViT's absolute position embedding (tiled up to image_size)
    vit_width: int = 1024
    vit_depth: int = 32
    vit_heads: int = 16
    vit_mlp_ratio: float = 4.625
    vit_window: int = 24
    vit_global_blocks: tuple[int, ...] = (7, 15, 23, 31)
    text_width: int = 1024
    text_heads: int = 16
    text_layers: int = 24
    text_context: int = 32  # tokens per prompt, start and end included: SAM 3's prompt length limit
    d_model: int = 256
    heads: int = 8
    ffn: int = 2048
    encoder_layers: int = 6
    decoder_layers: int = 6
    geometry_layers: int = 3
    queries: int = 200  # detections per prompt

    @property
    def feature_side(self) -> int:
        """Side of the image embedding, in tokens (72 for the published model)."""
        return self.image_size // self.patch_size

    def to_json(self) -> dict:
        return asdict(self)


SAM3_FULL = Sam3Size("sam3")
SAM3_TINY = Sam3Size(
    "sam3-tiny",
    image_size=224,
    pretrain_image_size=112,
    vit_width=64,
    vit_depth=2,
    vit_heads=2,
    vit_window=8,
    vit_global_blocks=(1,),
    text_width=64,
    text_heads=2,
    text_layers=2,
    d_model=64,
    heads=2,
    ffn=128,
    encoder_layers=1,
    decoder_layers=1,
    geometry_layers=1,
    queries=16,
)
SAM3_SIZES = {size.name: size for size in (SAM3_FULL, SAM3_TINY)}


def clip_bpe_path() -> str:
    """SAM 3's tokenizer is CLIP's byte-pair encoding; the ``sam3`` wheel does not ship the file, open_clip does."""
    import open_clip

    return os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")


def _attention(size: Sam3Size, batch_first: bool, dropout: float = 0.1) -> nn.Module:
    from sam3.model.model_misc import MultiheadAttentionWrapper

    return MultiheadAttentionWrapper(
        num_heads=size.heads, dropout=dropout, embed_dim=size.d_model, batch_first=batch_first
    )


def _encoder_layer(size: Sam3Size, batch_first: bool, geometry: bool) -> nn.Module:
    from sam3.model.encoder import TransformerEncoderLayer

    return TransformerEncoderLayer(
        activation="relu",
        d_model=size.d_model,
        dim_feedforward=size.ffn,
        dropout=0.1,
        pos_enc_at_attn=not geometry,
        pos_enc_at_cross_attn_keys=geometry,
        pos_enc_at_cross_attn_queries=False,
        pre_norm=True,
        self_attention=_attention(size, batch_first),
        cross_attention=_attention(size, batch_first),
    )


def _position_encoding(size: Sam3Size) -> nn.Module:
    from sam3.model.position_encoding import PositionEmbeddingSine

    # no precompute_resolution: the package precomputes on CUDA only; the encodings are cached on first use
    return PositionEmbeddingSine(num_pos_feats=size.d_model, normalize=True, scale=None, temperature=10000)


def _backbone(size: Sam3Size, bpe_path: str) -> nn.Module:
    from sam3.model.necks import Sam3DualViTDetNeck
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer
    from sam3.model.vitdet import ViT
    from sam3.model.vl_combiner import SAM3VLBackbone

    vit = ViT(
        img_size=size.image_size,
        pretrain_img_size=size.pretrain_image_size,
        patch_size=size.patch_size,
        embed_dim=size.vit_width,
        depth=size.vit_depth,
        num_heads=size.vit_heads,
        mlp_ratio=size.vit_mlp_ratio,
        norm_layer="LayerNorm",
        drop_path_rate=0.1,
        qkv_bias=True,
        use_abs_pos=True,
        tile_abs_pos=True,
        global_att_blocks=size.vit_global_blocks,
        rel_pos_blocks=(),
        use_rope=True,
        use_interp_rope=True,
        window_size=size.vit_window,
        pretrain_use_cls_token=True,
        retain_cls_token=False,
        ln_pre=True,
        ln_post=False,
        return_interm_layers=False,
        bias_patch_embed=False,
    )
    neck = Sam3DualViTDetNeck(
        position_encoding=_position_encoding(size),
        d_model=size.d_model,
        scale_factors=[4.0, 2.0, 1.0, 0.5],
        trunk=vit,
        add_sam2_neck=False,
    )
    text = VETextEncoder(
        tokenizer=SimpleTokenizer(bpe_path=bpe_path),
        d_model=size.d_model,
        width=size.text_width,
        heads=size.text_heads,
        layers=size.text_layers,
        context_length=size.text_context,
    )
    return SAM3VLBackbone(visual=neck, text=text, scalp=1)


def _transformer(size: Sam3Size) -> nn.Module:
    from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer
    from sam3.model.encoder import TransformerEncoderFusion
    from sam3.model.model_misc import TransformerWrapper

    encoder = TransformerEncoderFusion(
        layer=_encoder_layer(size, batch_first=True, geometry=False),
        num_layers=size.encoder_layers,
        d_model=size.d_model,
        num_feature_levels=1,
        frozen=False,
        use_act_checkpoint=False,
        add_pooled_text_to_img_feat=False,
        pool_text_with_mask=True,
    )
    decoder_layer = TransformerDecoderLayer(
        activation="relu",
        d_model=size.d_model,
        dim_feedforward=size.ffn,
        dropout=0.1,
        cross_attention=_attention(size, batch_first=False),
        n_heads=size.heads,
        use_text_cross_attention=True,
    )
    decoder = TransformerDecoder(
        layer=decoder_layer,
        num_layers=size.decoder_layers,
        num_queries=size.queries,
        return_intermediate=True,
        box_refine=True,
        num_o2m_queries=0,
        dac=True,
        boxRPB="log",
        d_model=size.d_model,
        frozen=False,
        interaction_layer=None,
        dac_use_selfatt_ln=True,
        resolution=None,  # not given: the package would precompute box coordinates on CUDA; they are cached on use
        stride=None,
        use_act_checkpoint=False,
        presence_token=True,
    )
    return TransformerWrapper(encoder=encoder, decoder=decoder, d_model=size.d_model)


def _scoring(size: Sam3Size) -> nn.Module:
    from sam3.model.model_misc import MLP, DotProductScoring

    mlp = MLP(
        input_dim=size.d_model,
        hidden_dim=size.ffn,
        output_dim=size.d_model,
        num_layers=2,
        dropout=0.1,
        residual=True,
        out_norm=nn.LayerNorm(size.d_model),
    )
    return DotProductScoring(d_model=size.d_model, d_proj=size.d_model, prompt_mlp=mlp)


def _segmentation_head(size: Sam3Size) -> nn.Module:
    from sam3.model.maskformer_segmentation import PixelDecoder, UniversalSegmentationHead

    return UniversalSegmentationHead(
        hidden_dim=size.d_model,
        upsampling_stages=3,
        aux_masks=False,
        presence_head=False,
        dot_product_scorer=None,
        act_ckpt=False,
        cross_attend_prompt=_attention(size, batch_first=False, dropout=0.0),
        pixel_decoder=PixelDecoder(num_upsampling_stages=3, interpolation_mode="nearest", hidden_dim=size.d_model),
    )


def _geometry_encoder(size: Sam3Size) -> nn.Module:
    from sam3.model.geometry_encoders import SequenceGeometryEncoder

    return SequenceGeometryEncoder(
        pos_enc=_position_encoding(size),
        encode_boxes_as_points=False,
        points_direct_project=True,
        points_pool=True,
        points_pos_enc=True,
        boxes_direct_project=True,
        boxes_pool=True,
        boxes_pos_enc=True,
        d_model=size.d_model,
        num_layers=size.geometry_layers,
        layer=_encoder_layer(size, batch_first=False, geometry=True),
        use_act_ckpt=False,
        add_cls=True,
        add_post_encode_proj=True,
    )


def _allow_cpu_only() -> None:
    """The package pins a small tensor to page-locked memory on every box encoding, which needs a CUDA
    driver; without one pinning means nothing, so ``pin_memory`` returns the tensor itself."""
    if not torch.cuda.is_available() and not getattr(torch.Tensor.pin_memory, "rsov_cpu_only", False):

        def pin_memory(self: torch.Tensor, device: object = None) -> torch.Tensor:
            return self

        pin_memory.rsov_cpu_only = True  # type: ignore[attr-defined]
        torch.Tensor.pin_memory = pin_memory  # type: ignore[method-assign,assignment]


def build_sam3(size: Sam3Size = SAM3_FULL, bpe_path: str | None = None) -> nn.Module:
    """A ``sam3.model.sam3_image.Sam3Image`` detector of ``size``, randomly initialised, in eval mode."""
    _allow_cpu_only()
    try:
        from sam3.model.sam3_image import Sam3Image
    except ImportError as exc:
        raise InputError(
            f"The SAM 3 engine needs the `sam3` package ({exc}): pip install 'rsov[sam3]' (or sam3==0.1.4)."
        ) from exc
    model = Sam3Image(
        backbone=_backbone(size, bpe_path or clip_bpe_path()),
        transformer=_transformer(size),
        input_geometry_encoder=_geometry_encoder(size),
        segmentation_head=_segmentation_head(size),
        num_feature_levels=1,
        o2m_mask_predict=True,
        dot_prod_scoring=_scoring(size),
        use_instance_query=False,
        multimask_output=True,
        inst_interactive_predictor=None,
        matcher=None,
    )
    text = model.backbone.language_backbone.encoder
    # the package leaves these two as torch.empty (a checkpoint fills them); random weights need values
    nn.init.normal_(text.positional_embedding, std=0.01)
    nn.init.normal_(text.text_projection, std=size.text_width**-0.5)
    return model.eval()


def save_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Write ``model``'s weights in SAM 3's checkpoint format (``{"model": {"detector.<name>": tensor}}``)."""
    state = {f"detector.{name}": tensor for name, tensor in model.state_dict().items()}
    torch.save({"model": state}, path)


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a SAM 3 checkpoint's detector weights into ``model``; every weight must be there and fit."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a file that is not a checkpoint
        raise InputError(f"{path} is not a readable SAM 3 checkpoint: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise InputError(f"{path} is not a SAM 3 checkpoint (no state dict inside).")
    detector = {k.removeprefix("detector."): v for k, v in state.items() if k.startswith("detector.")}
    if not detector:
        raise InputError(f"{path} holds no SAM 3 detector weights (no 'detector.' keys): is it a SAM 3 checkpoint?")
    try:
        missing, _ = model.load_state_dict(detector, strict=False)  # the video tracker's keys are not ours
    except RuntimeError as exc:  # shapes that do not fit: another size of SAM 3
        raise InputError(f"{path} does not fit this SAM 3 architecture: {str(exc).splitlines()[0]}") from exc
    if missing:
        raise InputError(f"{path} lacks {len(missing)} SAM 3 detector weights, e.g. {', '.join(missing[:3])}.")
