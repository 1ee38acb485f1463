"""LSTM caption decoder: the image embedding is the first input, then word embeddings.

`start`, `step` and `select` are the decoding protocol (`model/step_decoder.py`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from model.step_decoder import TeacherForced
from model.vocabulary import START, SPECIAL_TOKENS

START_ID = SPECIAL_TOKENS.index(START)  # fixed by the vocabulary's layout

LSTMState = tuple[torch.Tensor, torch.Tensor]


class DecoderRNN(nn.Module):
    """Embedding -> LSTM -> Linear over the vocabulary.

    Args:
        embed_size: size of word and image embeddings.
        hidden_size: LSTM hidden size.
        vocab_size: number of output classes.
        num_layers: stacked LSTM layers.
        dropout: dropout between stacked layers.
    """

    def __init__(self, embed_size: int, hidden_size: int, vocab_size: int, num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_size)
        self.lstm = nn.LSTM(
            embed_size, hidden_size, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0
        )
        self.linear = nn.Linear(hidden_size, vocab_size)
        self.init_forget_gate_bias(1.0)

    def init_forget_gate_bias(self, value: float) -> None:
        """Start with forget gates mostly open (Jozefowicz et al., 2015).

        The image is only the first input, so what the LSTM learns about it must
        survive every later step; with the default zero bias, gradients from later
        words to the image fade, and the decoder is slow to start using the image.
        """
        hidden = self.lstm.hidden_size
        with torch.no_grad():
            for layer in range(self.lstm.num_layers):
                getattr(self.lstm, f"bias_ih_l{layer}")[hidden : 2 * hidden].fill_(value)
                getattr(self.lstm, f"bias_hh_l{layer}")[hidden : 2 * hidden].zero_()

    def forward(self, image_embeddings: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Teacher forcing over packed sequences.

        Step 0 sees the image and predicts `captions[:, 0]` (`<start>`); step t
        sees `captions[:, t-1]` and predicts `captions[:, t]`.

        Args:
            image_embeddings: (B, E).
            captions: (B, T) padded ids `<start> ... <end>`.
            lengths: (B,) true lengths (<= T).
        Returns:
            logits over the packed (non-padding) positions, (N, V), in the order of
            `pack_padded_sequence(captions, lengths, enforce_sorted=False).data`.
        """
        words = self.embed(captions[:, :-1])  # (B, T-1, E)
        inputs = torch.cat([image_embeddings.unsqueeze(1), words], dim=1)  # (B, T, E)
        packed = pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
        hidden, _ = self.lstm(packed)
        return self.linear(hidden.data)  # (N, V)

    def teacher_forced(self, image_embeddings: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor) -> TeacherForced:
        """`forward`'s logits with the token each packed position predicts (no attention).

        The image step's output "predicts" the first token. A language token there
        (`<fr>` in a multilingual model) is the caller's choice, which the image cannot
        predict, so it is left out of the targets; `<start>` is kept, as the
        one-language recipes were measured with it (leaving it out too changed what
        the trained-model test's recipe learnt: 49 of 60 instead of 60 for one seed).
        """
        packed = pack_padded_sequence(captions, lengths.cpu(), batch_first=True, enforce_sorted=False)
        logits = self(image_embeddings, captions, lengths)  # (N, V) over the packed positions
        first = int(packed.batch_sizes[0])  # packing is time-major: the first entries are every caption's step 0
        scored = torch.ones(len(packed.data), dtype=torch.bool, device=packed.data.device)
        scored[:first] = packed.data[:first] == START_ID
        return TeacherForced(logits[scored], packed.data[scored])

    def start(self, image_embeddings: torch.Tensor) -> LSTMState:
        """Run the image step; returns the LSTM state that decoding continues from."""
        zeros = image_embeddings.new_zeros(self.lstm.num_layers, image_embeddings.shape[0], self.lstm.hidden_size)
        _, state = self._cell(image_embeddings, (zeros, zeros))
        return state

    def step(self, tokens: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
        """One decoding step: (B,) token ids -> (B, V) logits and the new state."""
        hidden, state = self._cell(self.embed(tokens), state)  # (B, H)
        return self.linear(hidden), state

    def select(self, state: LSTMState, index: torch.Tensor) -> LSTMState:
        """Rows `index` (N,) of the state, for beam search to expand and reorder its hypotheses."""
        h, c = state  # (L, B, H) each
        return h[:, index], c[:, index]  # (L, N, H) each

    def _cell(self, inputs: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
        """One time step of `self.lstm`: (B, E) inputs -> (B, H) top-layer output and the new state.

        The LSTM's own weights go through `torch.lstm_cell`, layer by layer, instead of
        `self.lstm` on a one-token sequence: the same arithmetic, but on CPU `nn.LSTM` runs
        oneDNN's RNN, whose fixed cost per call is several times that of a whole step at
        small batches (BENCHMARKS.md, "What was tried").
        """
        h, c = state  # (L, B, H) each
        layers = self.lstm.num_layers
        new_h, new_c = [], []
        for layer in range(layers):
            weights = self.lstm.all_weights[layer]  # w_ih, w_hh, b_ih, b_hh
            layer_h, layer_c = torch.lstm_cell(inputs, (h[layer], c[layer]), *weights)  # (B, H) each
            new_h.append(layer_h)
            new_c.append(layer_c)
            inputs = layer_h
            if layer < layers - 1 and self.lstm.dropout and self.training:
                inputs = F.dropout(inputs, self.lstm.dropout, training=True)  # as nn.LSTM between layers
        return inputs, (torch.stack(new_h), torch.stack(new_c))
