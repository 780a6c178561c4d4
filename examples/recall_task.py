"""Multi-query associative recall: a synthetic long-range task for causal language models.

A sequence of ``seq_len`` tokens holds ``num_pairs`` key-value pairs at its start
(k1 v1 k2 v2 ...), random filler tokens in the middle, and ``num_queries`` queries at its end
(q1 a1 q2 a2 ...): each query is one of the stored keys (distinct queries) and its answer is
that key's value. The model must predict each answer from the query token, so it has to look
back across the filler to the pair. Loss and accuracy count the answer tokens only.

Keys, values and filler have disjoint vocabularies. Use fewer queries than pairs: with as many,
the last queries can be answered by elimination (the values not asked for yet), a shortcut
models find before they learn recall. A batch depends only on (seed, index), so
training data is reproducible and a resumed run sees the batches it would have seen.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class RecallBatch:
    """ids (B, seq_len) input tokens; query_positions (Q,) where each query token stands (the
    model's prediction there is scored); answers (B, Q) the value each query must recall."""

    ids: torch.Tensor
    query_positions: torch.Tensor
    answers: torch.Tensor

    def to(self, device) -> "RecallBatch":
        return RecallBatch(self.ids.to(device), self.query_positions.to(device), self.answers.to(device))


@dataclass(frozen=True)
class RecallTask:
    """Token ids: keys in [0, num_keys), values next (num_values), then filler (num_filler)."""

    seq_len: int
    num_pairs: int = 16
    num_queries: int = 16
    num_keys: int = 64
    num_values: int = 64
    num_filler: int = 32

    def __post_init__(self):
        if not 1 <= self.num_queries <= self.num_pairs <= self.num_keys:
            raise ValueError(f"need 1 <= num_queries ({self.num_queries}) <= num_pairs "
                             f"({self.num_pairs}) <= num_keys ({self.num_keys})")
        if 2 * (self.num_pairs + self.num_queries) > self.seq_len:
            raise ValueError(f"seq_len {self.seq_len} is too short for {self.num_pairs} pairs and "
                             f"{self.num_queries} queries (needs {2 * (self.num_pairs + self.num_queries)})")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RecallTask":
        """The task of the options ``add_arguments`` defines (values as many as keys)."""
        return cls(seq_len=args.seq_len, num_pairs=args.num_pairs, num_queries=args.num_queries,
                   num_keys=args.num_keys, num_values=args.num_keys)

    @property
    def vocab_size(self) -> int:
        return self.num_keys + self.num_values + self.num_filler

    @property
    def query_positions(self) -> torch.Tensor:
        return torch.arange(self.seq_len - 2 * self.num_queries, self.seq_len, 2)

    def batch(self, batch_size: int, seed: int, index: int) -> RecallBatch:
        """Batch number ``index`` of the stream ``seed`` (on the CPU)."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + index)
        b, p, q = batch_size, self.num_pairs, self.num_queries
        keys = torch.rand(b, self.num_keys, generator=g).argsort(-1)[:, :p]
        values = self.num_keys + torch.randint(self.num_values, (b, p), generator=g)
        asked = torch.rand(b, p, generator=g).argsort(-1)[:, :q]
        queries, answers = keys.gather(1, asked), values.gather(1, asked)
        filler_len = self.seq_len - 2 * (p + q)
        filler = self.num_keys + self.num_values + torch.randint(self.num_filler, (b, filler_len), generator=g)
        ids = torch.cat([torch.stack([keys, values], -1).flatten(1), filler,
                         torch.stack([queries, answers], -1).flatten(1)], dim=1)
        return RecallBatch(ids, self.query_positions, answers)


def loss_and_accuracy(logits: torch.Tensor, batch: RecallBatch) -> tuple:
    """Cross-entropy (a scalar tensor) and accuracy (a float) of the next-token predictions at
    the query positions against the answers; logits (B, seq_len, vocab)."""
    scored = logits[:, batch.query_positions].float()
    loss = F.cross_entropy(scored.flatten(0, 1), batch.answers.flatten())
    accuracy = (scored.argmax(-1) == batch.answers).float().mean().item()
    return loss, accuracy


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The task's command-line options (default None: the example fills them in)."""
    group = parser.add_argument_group("recall task")
    group.add_argument("--seq-len", type=int, help="tokens per sequence")
    group.add_argument("--num-pairs", type=int, help="key-value pairs at the start of each sequence")
    group.add_argument("--num-queries", type=int, help="queries at the end (at most --num-pairs)")
    group.add_argument("--num-keys", type=int, help="size of the key vocabulary, and of the value one")
