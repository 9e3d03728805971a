"""Image–text encoders: the protocol the concept scores need, and a CLIP model from a folder
on disk.

`load_clip` reads a Hugging Face `transformers` CLIP folder (what `save_pretrained` writes:
config.json, the weights, the tokenizer and the image-processor config). Nothing is ever
downloaded: the loader sets HF_HUB_OFFLINE and passes `local_files_only`. transformers (the
`qsenn[concepts]` extra) is imported only when a folder is loaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

import numpy as np
from PIL import Image

from ..errors import QsennError, first_line

if TYPE_CHECKING:
    import torch
    from transformers import CLIPModel, CLIPProcessor

ImageInput = Image.Image | np.ndarray  # a PIL image, or uint8 H×W×3 (or H×W grey) pixels
CLIP_MODEL_TYPE = "clip"  # config.json "model_type" of a CLIPModel
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))  # fast, or slow BPE files
_REASON_CHARS = 200  # of a loader's error message, quoted in ours


class ImageTextEncoder(Protocol):
    """Embeds images and texts into one space, where the cosine says how well they match."""

    def encode_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """B images → B×E float embeddings."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """P texts → P×E float embeddings."""
        ...


def as_rgb(image: ImageInput) -> Image.Image:
    """A PIL RGB image from a PIL image or uint8 pixels."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8 or not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)):
        raise ValueError(f"image pixels must be uint8 H×W×3 or H×W, got {pixels.dtype} {pixels.shape}")
    return Image.fromarray(pixels).convert("RGB")


class ClipEncoder:
    """A loaded CLIP model: image and text embeddings through its projection heads."""

    def __init__(self, model: CLIPModel, processor: CLIPProcessor, device: torch.device) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        # The tokenizer's model_max_length is often unset (huge); the position table is the limit.
        self.max_text_tokens = model.text_model.embeddings.position_embedding.num_embeddings

    def encode_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        import torch

        pixels = self.processor.image_processor(images=[as_rgb(image) for image in images], return_tensors="pt")
        with torch.inference_mode():
            output = self.model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device))
        return output.pooler_output.float().cpu().numpy()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        tokens = self.processor.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
        )
        with torch.inference_mode():
            output = self.model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)
            )
        return output.pooler_output.float().cpu().numpy()


def load_clip(folder: str | Path, device: str = "cpu") -> ClipEncoder:
    """The CLIP model in `folder`, in eval mode on `device`; never downloads anything."""
    folder = Path(folder)
    _check_clip_config(folder)
    # Before transformers (and huggingface_hub, which reads it at import) is imported.
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import CLIPModel, CLIPProcessor

    # The loaders raise many types (OSError, SafetensorError, UnpicklingError, ValueError, …)
    # for a bad file; each is the user's folder, not a bug here, so each becomes one line.
    try:
        with _quiet_transformers():
            # Mismatched shapes are reported below, in one line, instead of raised after a table.
            loaded = CLIPModel.from_pretrained(
                folder, local_files_only=True, output_loading_info=True, ignore_mismatched_sizes=True
            )
    except Exception as exc:
        raise QsennError(
            f"cannot load the CLIP weights in {folder} ({first_line(exc, _REASON_CHARS)}); re-save the model with save_pretrained"
        ) from None
    # With output_loading_info it returns (model, info), which its annotation does not say.
    model, info = cast(tuple["CLIPModel", dict[str, set]], loaded)
    # Unexpected keys are not checked: old checkpoints carry buffers (position_ids) newer code recomputes.
    wrong = sorted(info["missing_keys"]) + sorted(
        f"{key} {tuple(saved)} ≠ {tuple(expected)}" for key, saved, expected in info["mismatched_keys"]
    )
    if wrong:
        raise QsennError(
            f"the weights in {folder} do not fit its config.json ({len(wrong)} tensors missing or of another "
            f"shape, e.g. {wrong[0]}); re-save the model with save_pretrained"
        )
    # Without its files the tokenizer would still load, knowing only its special tokens.
    if not any(all((folder / name).is_file() for name in files) for files in TOKENIZER_FILES):
        raise QsennError(
            f"{folder} has no tokenizer (tokenizer.json, or vocab.json and merges.txt); save the model's "
            "CLIPProcessor or tokenizer into the folder with save_pretrained"
        )
    try:
        with _quiet_transformers():
            processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise QsennError(
            f"cannot load the CLIP tokenizer and image processor in {folder} ({first_line(exc, _REASON_CHARS)}); the folder needs "
            "the tokenizer and preprocessor files that CLIPProcessor.save_pretrained writes"
        ) from None
    n_tokens, n_embeddings = len(processor.tokenizer), model.text_model.embeddings.token_embedding.num_embeddings
    if n_tokens > n_embeddings:
        raise QsennError(
            f"the tokenizer in {folder} has {n_tokens} tokens but the model embeds only {n_embeddings}; "
            "the tokenizer belongs to another model: save the model's own tokenizer into the folder"
        )
    target = torch.device(device)
    return ClipEncoder(model.eval().to(target), processor, target)


def _check_clip_config(folder: Path) -> None:
    """A one-line error unless `folder` holds the config.json of a CLIP model."""
    if not folder.exists():
        raise QsennError(f"CLIP folder {folder} does not exist; pass the folder of a Hugging Face CLIP model")
    if not folder.is_dir():
        raise QsennError(f"{folder} is a file, not a CLIP model folder; pass the folder that holds its config.json")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise QsennError(
            f"{folder} is not a Hugging Face model folder (no config.json); pass the folder that "
            "save_pretrained wrote for a CLIP model"
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QsennError(
            f"cannot read {config_file} ({first_line(exc, _REASON_CHARS)}); re-save the model with save_pretrained"
        ) from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != CLIP_MODEL_TYPE:
        raise QsennError(
            f"{folder} holds a {model_type!r} model, not CLIP (model_type in config.json); pass a CLIP model folder"
        )


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No loading bars or warning tables from transformers: what goes wrong is raised as one line."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
