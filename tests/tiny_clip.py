"""A tiny randomly initialised CLIP saved as a Hugging Face folder, built offline (no download):
a 1-layer vision and text tower of width 16, and a character-level tokenizer whose vocabulary
the test writes itself."""

from __future__ import annotations

import string
from pathlib import Path

IMAGE_SIZE = 32
EMBED_DIM = 8
# Every character a phrase of the tests uses, each also as the last character of a word.
_CHARACTERS = string.ascii_lowercase + string.digits + "-',."


def tiny_vocabulary() -> dict[str, int]:
    vocabulary = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for character in _CHARACTERS:
        for token in (character, character + "</w>"):
            vocabulary[token] = len(vocabulary)
    return vocabulary


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """Write the model, tokenizer and image-processor config to `folder` with save_pretrained."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocabulary = tiny_vocabulary()
    tower = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={
            **tower,
            "vocab_size": len(vocabulary),
            "max_position_embeddings": 32,
            "bos_token_id": vocabulary["<|startoftext|>"],
            "eos_token_id": vocabulary["<|endoftext|>"],
            "pad_token_id": vocabulary["<|endoftext|>"],
        },
        vision_config={**tower, "image_size": IMAGE_SIZE, "patch_size": 8},
        projection_dim=EMBED_DIM,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        ),
        tokenizer=CLIPTokenizer(vocab=vocabulary, merges=[]),
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
