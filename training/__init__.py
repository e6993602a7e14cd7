"""Offline training of adapters: data, embedding cache, alignment and label training, eval."""
