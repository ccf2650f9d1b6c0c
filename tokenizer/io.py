"""Saving and loading a trained tokenizer as a self-describing directory.

What it is: `save_tokenizer(model, directory)` writes `config.json` (the resolved TokenizerConfig) and
`model.safetensors` (weights and the quantizer's EMA state; not its rolling usage window, a training measurement that
training checkpoints keep), each written under a temporary name and renamed into place; `load_tokenizer(directory)`
rebuilds the VQVAE from `config.json` alone and loads the weights with `strict=True`.
What it does not know: training state (optimizer, step, discriminator): the training loop's checkpoints hold those.
Where the idea comes from: nanochat's checkpoints (config JSON + strict load); safetensors so that nothing loads a
pickle it did not write.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tokenizer.config import TokenizerConfig
from tokenizer.model import VQVAE
from tokenizer.quantizer import VectorQuantizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
NOT_EXPORTED = tuple(f"quantizer.{name}" for name in VectorQuantizer.USAGE_BUFFERS)


def save_tokenizer(model: VQVAE, directory: str | Path) -> Path:
    """Write config.json and model.safetensors into `directory` (created if needed); returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
             if name not in NOT_EXPORTED}
    weights_temporary = directory / f".{WEIGHTS_FILE}.tmp"
    save_file(state, str(weights_temporary), metadata={"format": "pt"})
    os.replace(weights_temporary, directory / WEIGHTS_FILE)
    config_temporary = directory / f".{CONFIG_FILE}.tmp"
    config_temporary.write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    os.replace(config_temporary, directory / CONFIG_FILE)
    return directory


def load_tokenizer(directory: str | Path, device: str | torch.device = "cpu") -> VQVAE:
    """Rebuild the VQVAE from `directory`, in eval mode on `device`; clear errors name the offending file."""
    directory = Path(directory)
    config = load_config(directory)
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path}: tokenizer weights file not found")
    try:
        state = load_file(str(weights_path), device=str(device))
    except SafetensorError as error:
        raise ValueError(f"{weights_path}: not a readable safetensors file ({error})") from None
    model = VQVAE(config).to(device)
    _check_state(model, state, weights_path)
    fresh = model.state_dict()
    model.load_state_dict({**state, **{name: fresh[name] for name in NOT_EXPORTED}}, strict=True)
    return model.eval()


def load_config(directory: str | Path) -> TokenizerConfig:
    config_path = Path(directory) / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: tokenizer config file not found")
    try:
        mapping = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path}: not valid JSON ({error})") from None
    if not isinstance(mapping, dict):
        raise ValueError(f"{config_path}: expected a JSON object, got {type(mapping).__name__}")
    return TokenizerConfig.from_dict(mapping, where=str(config_path), complete=True)


def _check_state(model: VQVAE, state: dict[str, torch.Tensor], weights_path: Path) -> None:
    """Name missing, unexpected and wrongly shaped tensors before load_state_dict would."""
    expected = {name: tensor for name, tensor in model.state_dict().items() if name not in NOT_EXPORTED}
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        problems.append(f"missing {missing}")
    if unexpected:
        problems.append(f"unexpected {unexpected}")
    for name in sorted(set(expected) & set(state)):
        if expected[name].shape != state[name].shape:
            problems.append(f"{name} has shape {tuple(state[name].shape)}, the config needs "
                            f"{tuple(expected[name].shape)}")
    if problems:
        raise ValueError(f"{weights_path} does not match {weights_path.parent / CONFIG_FILE}: " + "; ".join(problems))
