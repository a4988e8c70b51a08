"""Small HuggingFace text models with random weights, built from configs (nothing is downloaded),
and the inputs users give them: token ids and a padding mask that masks the tail of one sequence."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

transformers = pytest.importorskip("transformers")

VOCAB = 100
SEQ = 8

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)


def _configs() -> dict[str, Callable[[], torch.nn.Module]]:
    t = transformers
    return {
        "bert": lambda: t.BertModel(t.BertConfig(**_COMMON)),
        "distilbert": lambda: t.DistilBertModel(
            t.DistilBertConfig(
                vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64
            )
        ),
        "albert": lambda: t.AlbertModel(t.AlbertConfig(embedding_size=16, **_COMMON)),
        "roberta": lambda: t.RobertaModel(t.RobertaConfig(pad_token_id=1, **_COMMON)),
        "electra": lambda: t.ElectraModel(t.ElectraConfig(embedding_size=16, **_COMMON)),
        "mobilebert": lambda: t.MobileBertModel(
            t.MobileBertConfig(
                vocab_size=VOCAB,
                hidden_size=32,
                embedding_size=16,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=32,
                intra_bottleneck_size=16,
                true_hidden_size=16,
                max_position_embeddings=64,
                num_feedforward_networks=2,
            )
        ),
        "gpt2": lambda: t.GPT2Model(
            t.GPT2Config(
                vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0
            )
        ),
    }


NAMES = sorted(_configs())
#: models whose forward takes token_type_ids
TAKES_TOKEN_TYPES = {"bert", "albert", "electra", "mobilebert"}


class LastHidden(torch.nn.Module):
    """``model(input_ids=..., attention_mask=...[, token_type_ids=...]).last_hidden_state``, as users call it."""

    def __init__(self, model: torch.nn.Module, token_types: bool) -> None:
        super().__init__()
        self.model = model
        self.token_types = token_types

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        kwargs = {"token_type_ids": token_type_ids} if self.token_types and token_type_ids is not None else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state


def build(name: str, seed: int = 0) -> LastHidden:
    """The model ``name`` with random weights (seeded), in eval mode."""
    torch.manual_seed(seed)
    return LastHidden(_configs()[name](), name in TAKES_TOKEN_TYPES).eval()


def inputs(name: str, seed: int = 0, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Token ids (no padding id), a mask with zeros at the end of the last sequence, token types if taken."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (batch, SEQ), generator=gen)
    mask = torch.ones(batch, SEQ, dtype=torch.long)
    mask[-1, SEQ - 3 - seed % 3 :] = 0
    out = (ids, mask)
    if name in TAKES_TOKEN_TYPES:
        types = torch.zeros(batch, SEQ, dtype=torch.long)
        types[:, SEQ // 2 :] = 1
        out += (types,)
    return out
