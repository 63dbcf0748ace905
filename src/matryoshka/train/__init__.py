"""Training: Matryoshka fine-tuning on sentence-transformers' trainer (losses, schedules, model, data,
loop: ``matryoshka train``) and post-hoc adapters for frozen embeddings (``matryoshka adapt``).

Nothing is imported here, so ``matryoshka.train.adapter`` loads without torch.
"""
