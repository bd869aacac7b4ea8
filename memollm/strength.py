"""A learned strength: each token's memory strength S read from its own state when it is read.

The hand-made rule gives every new token the same S0 and lets attention grow it. A
``StrengthGate`` instead reads S from the token itself, as TRIM-KV ("Cache What Lasts",
arXiv 2512.03324) and KVzap (kvpress) do: per layer, a linear map from the attention input
(the hidden state after the layer's input norm) to ``log S`` for each KV head. The token's
retention is then ``R = exp(-age / S)`` with its age in tokens: a function word can fade within
a few tokens while a name or a number is kept for hundreds.

A gate is a small safetensors file (one weight and one bias per layer) whose metadata (one JSON
string under ``memollm``) records
the model it was trained for, the data, the settings and the seed (``memollm train-strength``
writes it). The bundled model's gate ships in the package (``memollm/gates``); ``find_gate``
looks one up by the model's shape.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

from .config import ConfigError



def model_signature(model: torch.nn.Module) -> dict[str, Any]:
    """What a gate must match: the architecture and the sizes of the attention inputs."""
    cfg = model.config.get_text_config()
    heads = cfg.num_attention_heads
    return {"model_type": cfg.model_type, "num_hidden_layers": cfg.num_hidden_layers,
            "hidden_size": cfg.hidden_size, "num_key_value_heads": getattr(cfg, "num_key_value_heads", heads) or heads,
            "vocab_size": cfg.vocab_size}


class StrengthGate(torch.nn.Module):
    """Per layer, ``Linear(hidden_size -> kv_heads)`` from the attention input to ``log S`` (S in tokens).

    ``layers`` are the decoder layers the gate has a map for (the full-attention ones); the
    bias starts at ``init_log_strength`` so an untrained gate remembers every token alike.
    """

    def __init__(self, layers: list[int], hidden_size: int, kv_heads: int, *,
                 init_log_strength: float = 4.0, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.layers = list(layers)
        self.hidden_size, self.kv_heads = int(hidden_size), int(kv_heads)
        self.weight = torch.nn.Parameter(torch.zeros(len(self.layers), kv_heads, hidden_size))
        self.bias = torch.nn.Parameter(torch.full((len(self.layers), kv_heads), float(init_log_strength)))
        self.index = {layer: i for i, layer in enumerate(self.layers)}
        self.metadata: dict[str, str] = dict(metadata or {})

    def forward(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """``log S`` ``[..., kv_heads]`` of tokens whose attention input in ``layer`` is ``hidden`` ``[..., hidden]``."""
        i = self.index[layer]
        return torch.nn.functional.linear(hidden.to(self.weight.dtype), self.weight[i], self.bias[i])

    def read_input(self, module, args, kwargs) -> torch.Tensor:
        """``log S`` ``[batch, kv_heads, tokens]`` of the tokens an attention ``module``'s forward
        pre-hook (``args``, ``kwargs``) is about to read: what a cache books as they arrive."""
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        return self(module.layer_idx, hidden).movedim(-1, 1)

    def log_strength_all(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[layers, tokens, kv_heads]`` from the attention inputs of every gated layer ``[layers, tokens, hidden]``."""
        return torch.einsum("lth,lkh->ltk", hidden.to(self.weight.dtype), self.weight) + self.bias[:, None]

    @property
    def num_parameters(self) -> int:
        return self.weight.numel() + self.bias.numel()

    def save(self, path: str | Path) -> None:
        """Write the gate with its metadata as one sorted JSON string (safetensors writes a header's
        keys in no fixed order: one key keeps the same gate the same bytes)."""
        meta = json.dumps({**self.metadata, "layers": self.layers}, sort_keys=True)
        save_file({"weight": self.weight.detach().float().contiguous(), "bias": self.bias.detach().float().contiguous()},
                  str(path), metadata={"memollm": meta})

    @classmethod
    def load(cls, path: str | Path) -> "StrengthGate":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("memollm", "{}"))
        tensors = load_file(str(path))
        layers = meta.pop("layers")
        weight, bias = tensors["weight"], tensors["bias"]
        gate = cls(layers, weight.shape[-1], weight.shape[1], metadata=meta)
        with torch.no_grad():
            gate.weight.copy_(weight)
            gate.bias.copy_(bias)
        return gate.eval()

    def matches(self, model: torch.nn.Module) -> bool:
        """Whether this gate was trained for a model of ``model``'s shape."""
        want = self.metadata.get("signature")
        return want is not None and json.loads(want) == model_signature(model)


def bundled_gates() -> list[Path]:
    """The gate files that ship in the package."""
    folder = resources.files("memollm") / "gates"
    if not folder.is_dir():
        return []
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".safetensors"))


def find_gate(model: torch.nn.Module, path: str | Path | None = None) -> StrengthGate:
    """The gate at ``path``, else the bundled gate trained for ``model``'s shape; a ``ConfigError``
    naming the command that trains one when there is none, or when ``path``'s gate is for another model."""
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"strength gate {str(path)!r}: no such file")
        gate = StrengthGate.load(path)
        if not gate.matches(model):
            raise ConfigError(f"strength gate {str(path)!r} was trained for {gate.metadata.get('model', '?')}, "
                              f"not for this {type(model).__name__}; train one with `memollm train-strength`")
        return gate.requires_grad_(False)
    for candidate in bundled_gates():
        gate = StrengthGate.load(candidate)
        if gate.matches(model):
            return gate.requires_grad_(False)
    raise ConfigError(f"no strength gate ships for this {type(model).__name__} "
                      f"({model_signature(model)['model_type']}, {model_signature(model)['num_hidden_layers']} layers): "
                      "train one with `memollm train-strength --model ... --out gate.safetensors` and pass "
                      "strength_gate='gate.safetensors'")


__all__ = ["StrengthGate", "bundled_gates", "find_gate", "model_signature"]
