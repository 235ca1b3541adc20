"""Stage 1 (`tokenizer`): the 3D-MBQ-VAE (section 3.1, Appendix B; DESIGN D2-D5, D11).

  python launch/train.py --config=configs/tokenizer.py:toy --workdir=DIR

Variants (comma-separated modifiers apply on top of a base, e.g. `toy,vq`; a modifier
alone applies to `paper`):
  toy            shapes on CPU in minutes: 9 x 64 x 64 clips, small widths
  paper          paper widths (137.6M encoder / 179.0M decoder, D2) and schedule (D.2, D11):
                 AdamW 1e-4 cosine, fp32, grad-accum 8, 800k steps, bucket mixture
                 33x256^2 / 17x512^2 / 33x720x1280 / 49x480x640 at 40/10/25/25 %, mesh 4x8
  vq, lfq, gumbel  Table 7 quantizers instead of the default FSQ (12,800 codes, d = 8):
                 VQ 4096 codes d = 256; binary LFQ d = 13 (8192 codes; binary LFQ has 2^d
                 codes, so Table 7's 8000 is not reachable); Gumbel 256 codes d = 512
  no_mfi         without the masked-frame-index loss and head (section 4.2)
  no_patch_mask, no_frame_mask, no_mask   Table 8's masking ablations
  masked         the paper's patch + frame masking and MFI head on the toy (which trains
                 without them, see `_toy`); `toy,masked,no_mfi` etc. ablate from there
"""

import ml_collections

from configs.common import base_config
from motionaura_jax.data.config import arrayrecord_config, shapes_config

BASES = ("toy", "paper")
MODIFIERS = (
    "vq",
    "lfq",
    "gumbel",
    "masked",
    "no_mfi",
    "no_patch_mask",
    "no_frame_mask",
    "no_mask",
)
VARIANTS = BASES + MODIFIERS

# Table 7 rows: quantizer sections with the latent width they need.
_QUANTIZERS = {
    "fsq": (8, dict(name="fsq", levels=(8, 8, 8, 5, 5), commit_weight=0.25)),
    "vq": (256, dict(name="vq", codebook_size=4096, beta=0.25)),
    "lfq": (13, dict(name="lfq", entropy_weight=0.1, commit_weight=0.25, gamma=1.0, tau=0.01)),
    "gumbel": (512, dict(name="gumbel", codebook_size=256, temperature=1.0, kl_weight=5e-4)),
}


def _model(
    stem: int,
    widths,
    depths,
    dec_widths,
    dec_depths,
    mfi_hidden: int,
    *,
    stem_stride: int = 2,
    expansion: int = 4,
    temporal_down=(False, True, True),
    spatial_down=(),
):
    """`tokenizer.model.build_tokenizer` fields, 1:1."""
    latent_dim, quantizer = _QUANTIZERS["fsq"]
    return ml_collections.ConfigDict(
        dict(
            latent_dim=latent_dim,
            stem_width=stem,
            widths=tuple(widths),
            depths=tuple(depths),  # (2, 2, 2, 3): temporal downsampling at blocks 6 and 9
            decoder_widths=tuple(dec_widths),
            decoder_depths=tuple(dec_depths),
            temporal_down=tuple(temporal_down),
            spatial_down=tuple(spatial_down),  # () = every downsampler halves H and W
            stem_stride=stem_stride,  # B.1.1: (1, 3, 3) stride-2 stem
            expansion=expansion,  # B.1.3: MB expansion ratio 4
            depthwise_impl="",  # "" = per backend: shifted on CPU, grouped elsewhere
            conv_impl="",  # "" = per backend: frames2d on CPU, xla3d elsewhere
            transpose_impl="",  # decoder's last layer: "" = per backend: subpixel on CPU
            remat=False,
            dtype="float32",  # D.2: fp32 "to reduce the risk of numerical overflow"
            mfi_hidden=mfi_hidden,  # 0 = no MFI head
            quantizer=ml_collections.ConfigDict(quantizer),
        )
    )


def _common() -> ml_collections.ConfigDict:
    c = base_config("tokenizer")
    c.masking = ml_collections.ConfigDict(
        dict(
            patch=True,
            patch_sizes=(16, 32),
            patch_ratio=(0.2, 0.6),  # B.2.2: cosine 20% -> 60%
            frame=True,
            frame_prob=(0.1, 0.5),  # B.2.2: cosine 10% -> 50%
            total_steps=0,  # 0 = train.num_steps
            fill=0.0,
        )
    )
    c.loss = ml_collections.ConfigDict(dict(mfi_weight=1.0))
    c.eval = ml_collections.ConfigDict(
        dict(
            num_clips=256,  # held-out clips for PSNR / SSIM / codebook usage
            batch_size=32,
            split="eval",
            frames=0,  # 0 = data.frames; the toy trains on shorter clips than it scores
        )
    )
    return c


def _toy() -> ml_collections.ConfigDict:
    """CPU toy: the paper's encoder/decoder skeleton (causal 3D convs, per-frame norms,
    4x temporal compression with causal depth-to-time upsampling), FSQ with 12,800 codes,
    masking + MFI, sized so that a 2-core CPU trains it in 10 minutes:
    9 x 64 x 64 -> 3 x 8 x 8 tokens.

    Deviations from `paper`, all measured on the 2-core CPU (docs/DESIGN.md D2):
      * 8x spatial compression, not 16x: at 16x (4 x 4 tokens a frame) the toy plateaued
        at 14-16 dB in 10 minutes and its reconstructions lost colour, which the t2v
        oracle then cannot read; at 8x the same budget reaches ~23 dB in 4 minutes;
      * patchify stem (1, 4, 4) stride 4 (space-to-depth) instead of (1, 3, 3) stride 2,
        then one space+time downsampler and one time-only downsampler (`spatial_down`),
        so nothing runs above 16 x 16; the decoder mirrors it and ends in a (1, 8, 8)
        stride-4 ConvTranspose;
      * no MB / Inception-Fused-MB blocks (depths 0): they slowed early training (15.6 dB
        vs 23.0 dB after 240 s, same schedule). Session 5 re-measured their cost: decoder
        MB blocks at the 8x8 stages make the step 1.6-1.75x slower and scored 21.3 dB
        against 22.5 dB after 240 s; the `paper` variant and the tests keep them;
      * training clips are 9 frames, the length it is scored on. Session 5 measured what
        training on 5-frame clips (1 + 4k, k = 1) cost: scored on 9 frames, frames 1-5
        reached 25-26 dB but frames 6-9 only 17-20 dB, since the third latent frame's causal
        context never occurred in training; the same 10-minute budget on 9-frame clips
        gave 26.8 dB against 23.5 dB. With the sub-pixel transposed conv (conv3d.py) a
        9-frame step costs what a 5-frame step did before;
      * Muon 5e-3 (paper: AdamW 1e-4), no weight decay, batch 8, no gradient accumulation;
      * no FSQ commitment term (D4's 0.25 kept the codebook usage at 9%; see below);
      * no patch or frame masking and no MFI head (the `masked` modifier restores them).
        The target is always the clean clip (D5), so masked pixels are inpainted, not
        reconstructed. After 3,600 steps (about 6 CPU minutes) the toy scored 21.3 dB on
        256 held-out clips with the paper's schedule (patches 20% -> 60%, frames 10% ->
        50%) and 23.5 dB without masking (session 4), and the oracle read the shape of
        only 19% of the objects in the masked tokenizer's reconstructions, against 55%
        without masking: the t2v and inpaint stages cannot draw shapes their tokenizer
        loses. Under `masked` the toy uses MFI weight 0.1 (its cross entropy, ~1.4 at
        the start, is two orders of magnitude above the reconstruction MSE and otherwise
        drives the shared encoder) and 8 / 16 px patches (the paper's 16 / 32 on 256 px,
        scaled 1/4).
    """
    c = _common()
    c.data = shapes_config()  # 9 x 64 x 64, the clips the t2v and inpaint toys use
    c.model = _model(
        32,
        (32, 48, 64),
        (0, 0, 0),
        (32, 48, 64),
        (0, 0, 0),
        64,
        stem_stride=4,
        expansion=2,
        temporal_down=(True, True),
        spatial_down=(True, False),
    )
    # Muon (`optimizer.name='muon'`, train/optim.py): the convolutions between 16 or more
    # channels get orthogonalised momentum updates, the RGB stem and output layers, norms
    # and biases AdamW, all at this lr (Moonlight's RMS matching). Session 31, same seed,
    # same 7,500-step cosine, stopped at 3,101 steps (256 held-out clips): 28.18 dB, SSIM
    # 0.882, codebook usage 41.8%, oracle shape 0.88, against 26.95 dB, 0.864, 33.1% and
    # 0.64 with AdamW; train PSNR 25.0 against 22.6 dB at step 1,000. Its step costs 1.02x
    # AdamW's (8.25 against 8.44 steps/s in the loop, steps 100-500).
    c.optimizer.update(
        name="muon", lr=5e-3, warmup_steps=50, weight_decay=0.0, clip_norm=1.0, end_lr_ratio=0.05
    )
    # 7,500 steps: about what the 10-minute cap allows on the usual machine type since the
    # decoder's upsampler runs in phase form (1.2x the step rate, DESIGN §7; 6,000 before).
    # On slower machines the cap stops it first: session 24 (middle type, 8.0 steps/s in the
    # loop) 4,844 steps, 27.49 dB, usage 21.6%, oracle shape 0.71. The toy is short of
    # training clips, not of capacity (session 7, 256 held-out clips): 3,600 steps gave
    # 26.84 dB and an oracle shape reading of 0.62 on its reconstructions, 7,200 steps
    # 28.16 dB and 0.73.
    # Narrower widths do not buy more than they cost (session 17, slow machine type, 256
    # held-out clips). At equal steps (24, 36, 48) trains as (32, 48, 64) does and
    # (16, 24, 32) about 10% worse (reconstruction MSE 0.0145 / 0.0143 / 0.0158 at step
    # 1,700), and their steps take 1 : 0.70 : 0.39 of the time (`tools/bench_tokenizer.py`);
    # in the train loop, which renders the clips in the same thread, 3.3 : 4.8 : 8.1 steps/s.
    # At equal wall time on short budgets the narrow ones win: 2,400 steps of (32, 48, 64)
    # 26.26 dB, usage 30.5%, oracle shape 0.56; 3,220 of (24, 36, 48) 26.71 dB, 30.9%,
    # 0.61; 6,200 of (16, 24, 32) 26.97 dB, 36.8%, 0.64. At the full budget they do not:
    # 12,000 steps of (16, 24, 32) (an estimated 10 minutes on the usual machine type, where
    # the rendering, about a third of the narrow step here, does not shrink with the widths)
    # scored 27.90 dB, usage 42.4%, oracle shape 0.77, against 28.00 dB, 25.5% and 0.75 for
    # this config's 6,000 steps (session 8, usual machine type). A narrower encoder under a
    # wider decoder, (24, 32, 48) / (40, 56, 80), 2,180 steps (1.08x the step time), scored
    # 25.70 dB.
    # More updates on the same clips do not help: batch 4 for 12,000 steps (the
    # same clips) scored 27.55 dB at lr 3.5e-3 and 27.23 dB at 5e-3, against 27.56 dB at
    # batch 8 (all three with the FSQ commitment below at 0.25);
    # the step costs the same per clip at batch 4 and 8 (about 120 clips/s, compute-bound).
    # A 0.999 moving average of the weights (`train.ema_decay`) scored 27.54 dB (session 8).
    # 86% of that model's squared error lies within 2 px of object edges (16.6 dB there,
    # 37.6 dB on the background).
    # Half the steps on object-centred 32 x 32 crops (batch 32, the pixels of 8 clips) and
    # half on full clips (session 9, scratch prototype, 6,000 steps): 27.94 dB, oracle
    # shape 0.78, against 28.00 dB and 0.75: the crops teach edges, but no more PSNR.
    # A Grain read thread (`data.read_threads=1`) gave no faster steps (11.1 vs 11.3/s).
    # The step is compute-bound: 9.0 GFLOP (XLA cost analysis, batch 8, fwd + bwd) in about
    # 0.07 s on the usual machine type (~130 GFLOP/s; 0.30-0.33 s on the slow one). So
    # capacity costs steps: decoder widths (64, 96, 128) made the step 1.87x
    # slower, one MB block in the decoder's finest or middle stage 1.17x / 1.20x (session 15,
    # `tools/bench_tokenizer.py` with model overrides, slow machine type).
    # Session 11: a residual refinement of the decoded RGB at full resolution (two per-frame
    # 3 x 3 convolutions, 3 -> 8 -> 3 channels, the second starting at zero) made the step
    # 1.6-1.75x slower (small-channel convolutions at 64 x 64 are slow on XLA CPU) and
    # trained worse at equal steps (loss 0.060 against 0.034 at step 700 of 2,400, with a
    # spike at step 500), so the decoder still ends in the ConvTranspose.
    # Session 20, a machine about 2.3x slower than the usual type, where the 600 s cap
    # stops this config at about 3,450 of its 6,000 steps, the learning rate still at 45%
    # of its peak (256 held-out clips): as is, 3,458 steps, 27.18 dB, usage 39.4%, oracle
    # shape 0.67; the schedule fitted to the cap (`train.num_steps=3450`; the run stopped
    # at 3,261) 27.13 dB, 28.0%, 0.64; a 0.999 moving average of the weights (3,296 steps)
    # 27.17 dB, 38.6%, 0.64. An undecayed schedule costs nothing here: what a slow machine
    # loses is steps. An L1 term beside the squared error (scratch, weight 1, as EDSR
    # trains) stalled near 18.5 dB train PSNR from step 400 to 1,000, where this config
    # climbs to 22.0 dB; stopped there.
    c.train.update(
        num_steps=7500, batch_size=8, log_every=100, checkpoint_every=1000, max_seconds=600.0
    )
    # No FSQ commitment term (D4 keeps 0.25 for `paper`; the FSQ paper has none: rounding
    # a bounded latent needs no codebook pull). Session 8, 6,000 steps, 256 held-out clips:
    # 28.00 dB, codebook usage 25.5%, perplexity 437 and an oracle shape reading of 0.75,
    # against 27.56 dB, 8.9%, 34.8 and 0.66 with the 0.25 commitment, which pulls the
    # latents onto few levels and so onto few codes.
    c.model.quantizer.commit_weight = 0.0
    # Finer code levels do not raise the PSNR; a sixth dimension, a little. Session 16,
    # 2,400 steps against the session-10 run of this config (26.26 dB, usage 30.5%,
    # oracle shape 0.56; 256 held-out clips):
    #   FSQ levels (16,) * 5 (1,048,576 codes, finer steps on the same 5 dims): 25.80 dB;
    #   (8, 5, 5, 4, 4, 4) (12,800 codes on 6 dims): 26.45 dB, usage 24.8%, oracle shape
    #   0.59 (train loss 8% lower at step 1,200). One run each, not enough to change D3's
    #   levels under the t2v and inpaint numbers measured on the 5-dim code.
    c.masking.patch_sizes = (8, 16)  # 64x64 frames: the paper's 16/32 on 256px, scaled 1/4
    c.masking.patch = c.masking.frame = False  # see the docstring; `masked` turns them on
    c.model.mfi_hidden, c.loss.mfi_weight = 0, 0.0
    c.eval.update(num_clips=256, batch_size=32, frames=0)
    return c


def _masked(c: ml_collections.ConfigDict, base: str) -> None:
    """D5's masking and the MFI head (the paper's default; the toy's MFI at 64 / 0.1)."""
    c.masking.patch = c.masking.frame = True
    if base == "toy":
        c.model.mfi_hidden, c.loss.mfi_weight = 64, 0.1


def _paper() -> ml_collections.ConfigDict:
    c = _common()
    c.data = arrayrecord_config()  # tools/videos_to_arrayrecord.py shards
    # Memory (DESIGN D11 note): 8 clips of 33 x 256^2 per GPU in fp32 do not fit an 80 GB
    # A100 by `tools/tokenizer_memory.py` (remat's saved residuals alone 64.5 GiB a device).
    # D.2: (frames, resolution, per-GPU batch) buckets at 40/10/25/25 %, as 1 + 4k frames;
    # bucket batch = per-GPU batch x 32 GPUs x 8 accumulation steps (global per update).
    c.data.buckets = (
        dict(frames=33, height=256, width=256, batch_size=8 * 32 * 8, ratio=0.40),
        dict(frames=17, height=512, width=512, batch_size=4 * 32 * 8, ratio=0.10),
        dict(frames=33, height=720, width=1280, batch_size=2 * 32 * 8, ratio=0.25),
        dict(frames=49, height=480, width=640, batch_size=4 * 32 * 8, ratio=0.25),
    )
    c.data.frames, c.data.height, c.data.width = 33, 256, 256
    c.model = _model(
        64, (128, 256, 512, 544), (2, 2, 2, 3), (128, 256, 544, 576), (3, 3, 3, 3), 256
    )
    c.model.remat = True
    c.mesh.update(data=4, fsdp=8, tensor=1)  # 4 x 8 A100 (D.2)
    c.optimizer.update(
        name="adamw", lr=1e-4, schedule="cosine", warmup_steps=1000, weight_decay=0.01, grad_accum=8
    )
    c.train.update(num_steps=800_000, batch_size=8 * 32 * 8, log_every=100, checkpoint_every=5000)
    c.eval.update(num_clips=256, batch_size=8)
    return c


def _modify(c: ml_collections.ConfigDict, name: str, base: str) -> None:
    if name == "masked":
        _masked(c, base)
    elif name in _QUANTIZERS:
        c.model.latent_dim, quantizer = _QUANTIZERS[name]
        c.model.quantizer = ml_collections.ConfigDict(quantizer)
    elif name == "no_mfi":
        c.model.mfi_hidden = 0
        c.loss.mfi_weight = 0.0
    elif name == "no_patch_mask":
        c.masking.patch = False
    elif name == "no_frame_mask":
        c.masking.frame = False
    elif name == "no_mask":
        c.masking.patch = c.masking.frame = False
    else:
        raise ValueError(f"unknown tokenizer variant {name!r}; use one of {VARIANTS}")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: a base (`toy`, `paper`), modifiers, or `base,modifier,...` (default `toy`)."""
    parts = [p for p in (arg or "toy").split(",") if p]
    base = parts.pop(0) if parts[0] in BASES else "paper"
    c = _toy() if base == "toy" else _paper()
    for name in parts:
        _modify(c, name, base)
    return c
