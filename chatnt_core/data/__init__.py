"""Instruction data: the stored record format, task cards, dataset building, batching."""
