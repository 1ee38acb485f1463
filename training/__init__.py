"""Data, training, evaluation and export of the captioner."""
