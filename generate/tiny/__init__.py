"""The tiny preset: drawn training data, the training script and its committed weights."""
