"""Policy-optimization math: advantages, losses, KL, aggregation and algorithm presets."""
