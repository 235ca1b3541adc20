"""Stage-2 denoiser (Sec. 3.2-3.3): `model` (spectral transformer, Table 2 variants),
`diffusion` (mask schedules, corruption, masked cross-entropy) and `sampling` (MaskGIT and
VQ-Diffusion-style samplers with classifier-free guidance)."""
