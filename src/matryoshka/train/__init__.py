"""Training: post-hoc adapters (and, later, Matryoshka fine-tuning)."""
