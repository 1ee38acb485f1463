"""Soft-attention LSTM decoder (Show, Attend and Tell; Xu et al., 2015).

At every step an MLP scores each cell of the image's G x G feature grid from the
LSTM's hidden state; the softmax of the scores weighs the cells into one
context vector, which a sigmoid gate computed from the hidden state (f_beta)
scales before it joins the word embedding as the LSTM's input. The LSTM starts
from the mean cell, through a tanh layer. The weights of each step ride in the
state (`AttentionState.attention`), where the decoding strategies find them
(`model.step_decoder.step_attention`) without knowing which decoder they run.

`start`, `step` and `select` are the decoding protocol (`model/step_decoder.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from model.step_decoder import TeacherForced


@dataclass
class AttentionState:
    """What the decoder carries between steps; one row per caption being decoded."""

    h: torch.Tensor  # (B, H)
    c: torch.Tensor  # (B, H)
    cells: torch.Tensor  # (B, P, E) the image's grid cells
    cell_keys: torch.Tensor  # (B, P, A) the cells through the attention MLP's first layer, computed once
    attention: torch.Tensor | None = None  # (B, P) the weights the last step used

    def rows(self, index: torch.Tensor) -> "AttentionState":
        picked = None if self.attention is None else self.attention[index]
        return AttentionState(self.h[index], self.c[index], self.cells[index], self.cell_keys[index], picked)


class SoftAttentionDecoder(nn.Module):
    """Embedding + attended grid context -> LSTM cell -> Linear over the vocabulary.

    Args:
        embed_size: size of word embeddings and of the grid cells' embeddings.
        hidden_size: LSTM hidden size (also the attention MLP's width).
        vocab_size: number of output classes.
        dropout: dropout on the hidden state before the output layer.
    """

    def __init__(self, embed_size: int, hidden_size: int, vocab_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        attention_size = hidden_size
        self.embed = nn.Embedding(vocab_size, embed_size)
        self.cell_attention = nn.Linear(embed_size, attention_size)
        self.hidden_attention = nn.Linear(hidden_size, attention_size)
        self.score = nn.Linear(attention_size, 1, bias=False)  # a bias would shift every score alike: no effect
        self.init_h = nn.Linear(embed_size, hidden_size)
        self.init_c = nn.Linear(embed_size, hidden_size)
        self.f_beta = nn.Linear(hidden_size, embed_size)  # the gate on the context
        self.lstm = nn.LSTMCell(2 * embed_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden_size, vocab_size)
        with torch.no_grad():  # forget gates mostly open at the start, as DecoderRNN's
            self.lstm.bias_ih[hidden_size : 2 * hidden_size].fill_(1.0)
            self.lstm.bias_hh[hidden_size : 2 * hidden_size].zero_()

    def start(self, image_embeddings: torch.Tensor) -> AttentionState:
        """(B, P, E) grid cells -> the state before the first word (from the mean cell)."""
        if image_embeddings.dim() != 3:
            raise ValueError(f"soft attention needs (B, P, E) grid embeddings, got shape {tuple(image_embeddings.shape)}")
        mean = image_embeddings.mean(dim=1)  # (B, E)
        return AttentionState(
            h=torch.tanh(self.init_h(mean)),  # (B, H)
            c=torch.tanh(self.init_c(mean)),
            cells=image_embeddings,
            cell_keys=self.cell_attention(image_embeddings),  # (B, P, A)
        )

    def attend(self, state: AttentionState) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P) attention weights over the cells, and the (B, E) context they weigh."""
        scores = self.score(torch.tanh(state.cell_keys + self.hidden_attention(state.h).unsqueeze(1)))  # (B, P, 1)
        weights = F.softmax(scores.squeeze(-1), dim=-1)  # (B, P)
        context = torch.bmm(weights.unsqueeze(1), state.cells).squeeze(1)  # (B, E)
        return weights, context

    def step(self, tokens: torch.Tensor, state: AttentionState) -> tuple[torch.Tensor, AttentionState]:
        """One decoding step: (B,) token ids -> (B, V) logits and the new state (with this step's weights)."""
        weights, context = self.attend(state)
        gate = torch.sigmoid(self.f_beta(state.h))  # (B, E)
        inputs = torch.cat([self.embed(tokens), gate * context], dim=1)  # (B, 2E)
        h, c = self.lstm(inputs, (state.h, state.c))  # (B, H) each
        logits = self.linear(self.dropout(h))  # (B, V)
        return logits, AttentionState(h, c, state.cells, state.cell_keys, weights)

    def select(self, state: AttentionState, index: torch.Tensor) -> AttentionState:
        """Rows `index` (N,) of the state, for beam search to expand and reorder its hypotheses."""
        return state.rows(index)

    def teacher_forced(self, image_embeddings: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor) -> TeacherForced:
        """Teacher forcing through `step` itself, so training and decoding run the same arithmetic.

        Step t is fed `captions[:, t]` and predicts `captions[:, t + 1]`; positions past
        a caption's end are left out of the logits and get zero attention.
        """
        state = self.start(image_embeddings)
        steps = captions.shape[1] - 1
        valid = torch.arange(steps, device=captions.device).unsqueeze(0) < (lengths.to(captions.device) - 1).unsqueeze(1)  # (B, T-1)
        logits, weights = [], []
        for t in range(steps):
            step_logits, state = self.step(captions[:, t], state)
            logits.append(step_logits)
            weights.append(state.attention)
        every = torch.stack(logits, dim=1)  # (B, T-1, V)
        attention = torch.stack(weights, dim=1) * valid.unsqueeze(-1)  # (B, T-1, P)
        return TeacherForced(every[valid], captions[:, 1:][valid], attention)

    def forward(self, image_embeddings: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor) -> TeacherForced:
        return self.teacher_forced(image_embeddings, captions, lengths)
