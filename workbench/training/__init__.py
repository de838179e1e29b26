"""Fine-tuning CNNs: the training loop, its config, and nested sets (one network per outer fold)."""
