"""Pure PyTorch captioner: configuration, vocabulary, transforms, networks and decoding.

Nothing in this package reads or writes files or downloads anything: training
and serving hand it tensors, dicts and weights, so both run the same code.
"""

from model.captioner import Captioner
from model.config import CaptionerConfig
from model.decoding import Caption, beam_search, greedy_decode
from model.vocabulary import Vocabulary

__all__ = ["Caption", "Captioner", "CaptionerConfig", "Vocabulary", "beam_search", "greedy_decode"]
