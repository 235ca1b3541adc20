"""3D-MBQ-VAE video tokenizer (section 3.1, Appendix B; DESIGN D2-D5).

model.py        VideoTokenizer (encode / decode / training forward), build_tokenizer,
                param_counts, check_video_shape, MFIHead
autoencoder.py  Encoder / Decoder built from nn/conv3d.py blocks
quantizers.py   FSQ (default, 12,800 codes), BinaryLFQ, VectorQuantizer, GumbelQuantizer
masking.py      patch and full-frame input masking with cosine schedules (D5)
losses.py       Eq. 1 as fixed by D4: reconstruction + quantizer terms + L_MFI
streaming.py    chunked long-video encode / decode with causal caches
"""
