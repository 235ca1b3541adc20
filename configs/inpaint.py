"""Stage 3 (`inpaint`): sketch-guided video inpainting with LoRA (section 4, App. F.2; D10).

  python launch/train.py --config=configs/inpaint.py:toy --workdir=DIR   # after stages 1, 2 in DIR

Variants:
  toy               shapes on CPU in minutes, on DIR/t2v (configs/t2v.py:toy) and its
                    tokenizer: GELU adapters of rank 64, 9 x 64 x 64 clips
  paper             the paper's schedule (Table 10, D.4; D11): Adam 2e-4 cosine, 8 clips
                    per GPU, 256 x 512, grad-accum 8, mesh 2 x 8 A100, rank 64 (Table 6)
  r8, r16, r32, r64 toy with LoRA rank 8 / 16 / 32 / 64 (Table 6)
  linear            toy with plain linear LoRA (mergeable into the base for export)
  paper_context     toy, but every z_t token is generated (no given context outside the
                    mask): the paper's setting, where only z_m carries the context
  concat            toy, but z_m's tokens are appended to the sequence as in the paper
                    (D10), not added to z_t's cell by cell (`inpaint.context`), with the
                    guidance that suits it (10)

The base is named, not copied: `base_dir` ("" = DIR/t2v) and `base_step` (-1 = latest)
are stored with every checkpoint, and `base_fingerprint` (filled at start-up) makes a
resumed run or the inference pipeline refuse a base whose weights have changed.
"""

import ml_collections

from configs.common import base_config
from motionaura_jax.data.config import shapes_config
from motionaura_jax.inpaint.sketch import sketch_config

VARIANTS = ("toy", "paper", "r8", "r16", "r32", "r64", "linear", "paper_context", "concat")
_RANKS = {"r8": 8, "r16": 16, "r32": 32, "r64": 64}  # Table 6


def _common() -> ml_collections.ConfigDict:
    c = base_config("inpaint")
    c.base_dir = ""  # stage-2 folder (<workdir>/t2v) or an export of one; "" = <workdir>/t2v
    c.base_step = -1  # -1: the latest finished t2v checkpoint
    c.base_fingerprint = ""  # SHA-1 of the base weights; filled at start-up, checked on resume
    c.tokenizer_dir = ""  # "" = the tokenizer the t2v config names (or <base workdir>/tokenizer)
    c.lora = ml_collections.ConfigDict(
        dict(
            rank=16,  # l < d (Table 6: 8-64)
            kind="adapter",  # adapter: W_up(GELU(W_down x)) (D10) | linear: mergeable LoRA
            alpha=1.0,  # linear LoRA scale alpha / rank
        )
    )
    c.sketch = sketch_config()
    c.inpaint = ml_collections.ConfigDict(
        dict(
            dilation=2,  # pixels the object's per-frame masks are grown by
            # no_shape: "a red object moves left" (shape from the sketch) | full
            caption="no_shape",
            known_outside=True,  # latent cells outside the mask are given (E(V)), not generated
            # How z_m enters the denoiser: "concat" (D10, the paper: appended tokens) or
            # "sum" (ours: added to z_t's embedding at the same cell; half the sequence)
            context="concat",
            cell_logits=False,  # z_m's token at a cell adds to that cell's logits (ours)
            cell_neighbours=False,  # ... read with the tokens of the 8 cells around it
        )
    )
    c.cache = ml_collections.ConfigDict(
        dict(
            path="",  # "" = <workdir>/inpaint_tokens.npz
            build=True,  # write a missing cache at start-up (single host)
            num_clips=2048,  # train clips whose V and V_m are tokenized into the cache
        )
    )
    c.diffusion = ml_collections.ConfigDict(
        dict(
            schedule="cosine",
            num_steps=0,
            p_uncond=0.1,
            sketch_drop=0.0,  # share of the text-dropped clips whose sketch is dropped too
            label_smoothing=0.0,  # D8
        )
    )
    c.eval = ml_collections.ConfigDict(
        dict(
            num_clips=64,  # held-out clips inpainted and scored by the oracle
            batch_size=32,
            split="eval",
            steps=10,  # D8
            cfg_scale=3.0,  # l_u + s (l_c - l_u) on the text; < 0: conditional model alone
            sampler="maskgit",
            temperature=1.0,
            choice_temperature=4.5,
            guide_sketch=False,  # the unconditional branch drops the sketch too (ours)
            seed=0,
            # maskgit corrector (denoiser/sampling.py `resample`), as in configs/t2v.py
            resample_steps=0,
            resample_ratio=0.25,
        )
    )
    return c


def _toy() -> ml_collections.ConfigDict:
    c = _common()
    c.data = shapes_config()  # 9 x 64 x 64, as configs/t2v.py:toy
    # Adam, not Muon (`optimizer.name='muon'` orthogonalises the adapters' down and up
    # factors and the sketch MLP's matrices). Session 31, on the session-31 main job's Muon
    # base, 2,900 steps, eval seeds 0-2: shape 0.688 / 0.656 / 0.672, PSNR gap outside the
    # hole 1.09 / 1.11 / 1.11 dB, against Adam's 0.703 / 0.688 / 0.703 and 1.30 / 1.06 /
    # 1.18 dB (colour 1.00 for both), though its train loss was 0.05-0.13 lower throughout.
    c.optimizer.update(
        name="adam", lr=5e-3, schedule="cosine", warmup_steps=20, end_lr_ratio=0.05, clip_norm=1.0
    )
    # Batch 8 as configs/t2v.py:toy: 3 x 8 x 8 = 192 tokens a clip on the 2-core CPU.
    # A 7-minute cap: the 2,900 steps take 330-400 s at the 8.4-8.7 steps/s of sessions 24
    # and 27's machines and the 7.3 of session 28's (its step is the denoiser's, not the
    # tokenizer's convolutions). The main job weighs each stage's share of its budget by
    # these caps; with 600 s (the 10 minutes) this stage finished 2.7 minutes
    # inside its share and the job ended at 26m15s of its 30 (session 27), time that the
    # tokenizer and t2v stages now train (session 28: 29m27s; docs/EXPERIMENTS.md).
    c.train.update(
        num_steps=2900, batch_size=8, log_every=25, checkpoint_every=500, max_seconds=420.0
    )
    # z_m added to z_t cell by cell (ours, `inpaint.context`; the paper appends it). Measured
    # in session 7 on the session-6 main-job t2v model, 64 held-out clips (shape / colour /
    # PSNR gap outside the hole; the tokenizer's own reconstruction reads shape 0.69):
    #   concat, 1,500 steps (2.6 steps/s, the 10 minutes): 0.72 / 1.00 / 14.7 dB at guidance
    #     10 (oversized blobs filling every generated cell; 0.56 / 0.97 / 6.3 dB at 3 on
    #     the session-4 model);
    #   sum, 1,500 steps (6.3 steps/s): 0.59 / 0.98 / 10.9 dB at 10, 0.58 / 1.00 / 4.1 dB
    #     at 3, 0.56 / 1.00 / 1.8 dB at 1;
    #   sum, 3,600 steps: 0.61 / 1.00 / 1.5 dB at 1, 0.63 / 1.00 / 2.3 dB at 2,
    #     0.59 / 0.94 / 1.1 dB at 0.5.
    # On the session-7 main-job models (6,000-step tokenizer, shape ceiling 0.73): 2,400
    # steps 0.58 / 1.00 / 2.49 dB, 3,300 steps 0.66 / 1.00 / 2.25 dB. 3,300 steps (about
    # 8 minutes) keep the main job inside its 30 minutes (session 8); session 9 spends the
    # same minutes on 2,900 steps of rank-64 adapters (below).
    # Summed, the denoiser reads the masked video at the cell it predicts, so it needs no
    # guidance for the colour; guidance only inflates the object over the generated cells.
    c.inpaint.context = "sum"
    c.eval.cfg_scale = 1.0
    # Token temperature 0.2: the generated cells around the hole come out closer to their
    # most likely codes, with less of the object spilling past the mask. Session 9, the
    # session-8 main-job model re-evaluated (64 clips; shape / colour / PSNR gap):
    #   temperature 1: 0.61 / 0.98 / 2.34 dB (seed 1: 0.64 / 0.98 / 2.03 dB);
    #   0.7: 0.56 / 1.00 / 1.97 dB; 0.4: 0.64 / 1.00 / 1.73 dB;
    #   0.2: 0.66 / 1.00 / 1.71 dB (seed 1: 0.63 / 1.00 / 1.75 dB); 0.05: 0.66 / 1.00 / 1.79 dB.
    # Not better: 24 steps in random order as in t2v (0.53 / 0.94 / 2.39 dB) or 20
    # confidence steps (0.61 / 0.98 / 2.12 dB at temperature 1; 0.61 / 1.00 / 1.74 at 0.2).
    # Session 15, the patched base with cell logits (0.58 / 0.95 / 1.12 dB at 0.2): 20 steps
    # 0.59 / 0.97 / 1.15 dB, temperature 0.05 0.59 / 0.95 / 1.19 dB, 0.5 0.56 / 0.95 /
    # 1.30 dB, choice temperature 1 0.61 / 0.94 / 1.22 dB. The sampler does not close the gap.
    c.eval.temperature = 0.2
    # No corrector passes (`eval.resample_steps`, configs/t2v.py). Session 11, that
    # session's main-job model (0.625 / 0.984 / 1.83 dB): 8 passes redrawing 25% of the
    # generated cells 0.594 / 0.969 / 1.83 dB; 16 x 15% 0.594 / 0.984 / 2.02 dB.
    # Rank 64 (the common default stays 16), 2,900 steps. Session 9, same base and cache,
    # temperature 0.2, eval seeds 0 / 1 (shape, PSNR gap):
    #   rank 16, 3,300 steps (6.75 steps/s alone): 0.66 / 1.71 dB, 0.63 / 1.75 dB;
    #   rank 32, 3,300 steps: 0.64 / 1.54 dB, 0.64 / 1.38 dB;
    #   rank 64, 3,300 steps (5.07 steps/s: 651 s, over the budget): 0.67 / 1.32 dB,
    #     0.66 / 1.16 dB; 2,900 steps: 0.66 / 1.38 dB, 0.66 / 1.49 dB.
    # A larger rank narrows the gap outside the hole; at lr 2e-3 and equal time 32 matched 64.
    # Then the learning rate, rank 32 (6.31 steps/s alone), 3,300 steps: 3e-3 0.67 / 1.41
    # dB, 0.67 / 1.36 dB; 5e-3 0.66 / 1.28 dB, 0.69 / 1.17 dB (2e-3 above: 1.54, 1.38).
    # At 5e-3 rank 64 pays for its slower step: 2,900 steps 0.70 / 1.04 dB, 0.67 / 0.98 dB.
    c.lora.rank = 64
    # Per-cell logits from z_m (`inpaint.cell_logits`, ours: inpaint/model.py CellLogits).
    # The toy's t2v base puts 2 x 2 cells on one position (configs/t2v.py `model.patch`),
    # so without them z_m reaches a cell's logits only through the frozen patch embedding
    # and one output for four cells. Session 14, the session-10 2,400-step tokenizer (26.3
    # dB, reconstructions read shape 0.64), 2,900 steps, eval seed 0 (shape / colour /
    # PSNR gap; steps/s on the slow machine type):
    #   patched base (session 13's 9,000 steps), cell logits: 0.58 / 0.98 / 1.08 dB (seeds
    #     1, 2: 0.55 / 1.00 / 1.17 dB, 0.61 / 0.98 / 1.14 dB), 5.6 steps/s;
    #   patched base, without: 0.25 / 0.98 / 3.07 dB (0.34 / 0.98 / 2.99 dB at 24 steps);
    #   unpatched base (sessions 10-12's 3,000 steps), cell logits: 0.59 / 0.98 / 0.77 dB
    #     (seed 1: 0.59 / 0.98 / 0.82 dB), 1.6-1.9 steps/s;
    #   unpatched base, without: 0.52 / 1.00 / 1.01 dB (seed 1: 0.55 / 1.00 / 1.11 dB).
    # They help either base; the patched one needs them. On the patched base 5,800 steps
    # (about 17 minutes alone on the slow machine type) gave 0.61 / 0.98 / 1.16 dB: the
    # shape is near the tokenizer's ceiling, so the toy keeps 2,900. Session 15 folded their
    # first linear layer into the token table (a lookup then a linear map is another
    # table): 0.58 / 0.95 / 1.12 dB, 0.58 / 0.95 / 1.16 dB, 0.58 / 0.97 / 1.31 dB over eval
    # seeds 0-2 on the same base and cache (one training run each way).
    # Session 16: where the gap lies, on that run, eval seed 0 (mean gap 1.12 dB):
    #   - by clip: median 0.41 dB; the worst tenth are at 3.7-7.5 dB. Those are single
    #     objects on plain backgrounds whose reconstruction reads 40-45 dB outside the
    #     hole, where a faint halo of the generated object past the mask costs 4-7 dB
    #     (`psnr_outside_gap_db_median` reports the median);
    #   - by place: 74% of the extra squared error lies in the ring of pixels that are
    #     outside the mask but inside a generated cell (15% of the pixels outside the
    #     mask), 26% beyond it.
    # Per-cell logits that also read the denoiser's output at their position (a
    # zero-initialised projection of the head's input added to the table row, the
    # interaction the sum of logits lacks) trained worse: loss 4.72 against 4.06 at step
    # 925 (4.83 against 4.26 at step 625 with a stop-gradient on that input), and were
    # dropped.
    c.inpaint.cell_logits = True
    # ... reading the z_m tokens of the 8 cells around each cell too (`cell_neighbours`,
    # a zero-initialised per-frame 3 x 3 depthwise filter on the table rows): the decoder
    # mixes neighbouring cells, so the halo at a cell depends on the hole's outline next
    # to it. Session 16, same base, cache and 2,900 steps (3.31 steps/s against 3.26):
    # train loss 1.88 against 3.29 at the end; shape / colour / gap over eval seeds 0-2
    # 0.59 / 0.97 / 0.79 dB, 0.63 / 0.98 / 0.87 dB, 0.59 / 0.98 / 0.83 dB (median gaps
    # 0.44, 0.33, 0.23 dB), against 0.58 / 0.95-0.97 / 1.12-1.31 dB without.
    c.inpaint.cell_neighbours = True
    # Session 23: the given cells decode from E(V)'s own codes, not the nearest codes of the
    # base's vocabulary, and the reference keeps every code (DESIGN D10 note). The main
    # job's models (26.9 dB tokenizer, 512-code base, 2,900 steps), eval seeds 0-2: shape /
    # colour / gap 0.64 / 1.00 / 0.84 dB, 0.67 / 1.00 / 0.72 dB, 0.66 / 1.00 / 0.86 dB
    # (reference shape 0.70); through the vocabulary, as before, seed 0 read 0.64 / 1.00 /
    # 0.58 dB against a reference 0.9 dB lower (31.77 against 32.68 dB).
    # Sketch guidance (`diffusion.sketch_drop=0.5`, `eval.guide_sketch=True`: the
    # unconditional branch drops the sketch too) stays off: on a 2,000-step toy (session 5,
    # 64 clips, concat) it read shape 0.61 / colour 1.00 at guidance 10, against 0.61 / 0.95
    # for the same model guided on the text alone; 0.61 at 6, 0.47 at 3.
    return c


def _paper() -> ml_collections.ConfigDict:
    c = _common()
    # The paper fine-tunes on YouTube-VOS + QuickDraw (App. C.4), which need a source with
    # per-object masks and sketches; until one exists the paper schedule runs on `shapes`
    # clips at the paper's resolution (256 x 512, 17 frames = 1 + 4k).
    c.data = shapes_config()
    c.data.frames, c.data.height, c.data.width = 17, 256, 512
    c.sketch.path = ""  # set to a SigLIP folder (e.g. google/siglip-so400m-patch14-384)
    c.lora.rank = 64  # Table 6's best
    c.mesh.update(data=2, fsdp=8, tensor=1)  # 2 x 8 A100 (D11)
    # D11 / Table 10: Adam 2e-4, cosine, 8 clips per GPU, grad-accum 8.
    c.optimizer.update(
        name="adam", lr=2e-4, schedule="cosine", warmup_steps=500, grad_accum=8, clip_norm=0.0
    )
    c.train.update(num_steps=20_000, batch_size=8 * 16 * 8, log_every=50, checkpoint_every=1000)
    c.cache.num_clips = 50_000
    c.eval.update(num_clips=64, batch_size=8, cfg_scale=10.0)
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg` is one of `VARIANTS` (default "toy")."""
    arg = arg or "toy"
    if arg == "toy":
        return _toy()
    if arg == "paper":
        return _paper()
    c = _toy()
    if arg in _RANKS:
        c.lora.rank = _RANKS[arg]
    elif arg == "linear":
        c.lora.kind = "linear"
    elif arg == "paper_context":
        c.inpaint.known_outside = False
    elif arg == "concat":
        c.inpaint.context, c.eval.cfg_scale = "concat", 10.0
    else:
        raise ValueError(f"unknown inpaint variant {arg!r}; use one of {VARIANTS}")
    return c
