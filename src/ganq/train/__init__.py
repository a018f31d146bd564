"""Training (torch): architectures, the GAN loop, checkpoints, and the metrics' data-set classifier."""
