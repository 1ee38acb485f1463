"""Pure PyTorch captioner: configuration, vocabulary, transforms, networks and decoding.

Nothing in this package downloads anything, and only `model/export_format.py`
(the export folder both training and serving use) reads or writes files:
training and serving hand the rest tensors, dicts and weights, so both run the
same code.
"""

from model.captioner import Captioner
from model.config import CaptionerConfig
from model.decoding import Caption, beam_search, greedy_decode
from model.vocabulary import Vocabulary

__all__ = ["Caption", "Captioner", "CaptionerConfig", "Vocabulary", "beam_search", "greedy_decode"]
