"""Stand-in for flash-linear-attention (interop tests only): Megatron-Core's GatedDeltaNet
refuses to build without it; its kernels are only needed by forward(), which never runs here."""
