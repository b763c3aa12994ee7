"""Compression families: quantize/ (one file per method); prune/, distill, lowrank plug in later."""
