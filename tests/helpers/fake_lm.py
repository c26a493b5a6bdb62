"""Crafted causal LMs for exact evaluation tests: small ``PreTrainedModel``s, so ``generate`` and
the KV-cache path of multiple-choice scoring run on them as on a real model."""

import torch
from transformers import DynamicCache, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast


class FakeConfig(PretrainedConfig):
    model_type = "forgetless_fake_lm"


class BigramLM(PreTrainedModel, GenerationMixin):
    """Next-token logits depend only on the current token: ``rows[tok]`` or ``default`` (so a
    cache holds nothing it needs). Records, per forward, the inputs it saw and whether it ran in
    eval mode and without autograd."""

    config_class = FakeConfig

    def __init__(self, V, rows=None, default=None):
        super().__init__(FakeConfig(vocab_size=V, num_hidden_layers=1))
        self.V = V
        self.default = torch.zeros(V) if default is None else default
        self.rows = rows or {}
        self.calls = []
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, cache=None, use_cache=False, **kw):
        self.calls.append((input_ids.clone(), self.training, not torch.is_grad_enabled()))
        logits = self.default.expand(*input_ids.shape, self.V).clone()
        for t, row in self.rows.items():
            logits[input_ids == t] = row
        if use_cache and cache is None:
            cache = DynamicCache()
        return CausalLMOutputWithPast(logits=logits, cache=cache)


def chain_model(V, answer_ids, eos):
    """Always answers ``answer_ids`` then EOS, whatever the prompt."""
    default = torch.zeros(V)
    default[answer_ids[0]] = 20.0
    rows = {}
    for a, b in zip(answer_ids, list(answer_ids[1:]) + [eos]):
        rows[a] = torch.zeros(V)
        rows[a][b] = 20.0
    return BigramLM(V, rows, default)
