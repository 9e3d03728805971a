"""Contrast for the embedded dataset: softmax regression on raw pixels vs the CNN.

    .venv/bin/python benchmarks/synth_pixel_baseline.py [--data-root data]

Fits a multinomial logistic regression (L-BFGS, small L2) on the standardised raw pixels of
the training images and reports its test accuracy; the demo's dense CNN is printed beside it
when the demo run exists.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qsenn_train.data import open_dataset
from qsenn_train.recipes import get_recipe


def pixels(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    images = np.stack([np.asarray(dataset.load_image(i), dtype=np.float32) / 255 for i in range(len(dataset))])
    return torch.from_numpy(images.reshape(len(dataset), -1)), torch.tensor(dataset.targets)


def fit_softmax(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float) -> torch.nn.Linear:
    linear = torch.nn.Linear(x.shape[1], n_classes)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=500, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(x), y) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return linear


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("data"))
    parser.add_argument("--run", type=Path, default=Path("runs/demo/resnet18/synth/0"))
    args = parser.parse_args()
    torch.manual_seed(0)
    train, test, info = open_dataset(get_recipe("demo"), args.data_root)
    x_train, y_train = pixels(train)
    x_test, y_test = pixels(test)
    mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    print(
        f"{len(x_train)} train / {len(x_test)} test images, {x_train.shape[1]} pixel values, "
        f"{info.num_classes} classes (chance {1 / info.num_classes:.4f})"
    )
    for l2 in (1e-4, 1e-3, 1e-2):
        linear = fit_softmax(x_train, y_train, info.num_classes, l2)
        with torch.no_grad():
            train_acc = (linear(x_train).argmax(1) == y_train).float().mean().item()
            test_acc = (linear(x_test).argmax(1) == y_test).float().mean().item()
        print(f"logistic regression on raw pixels, L2 {l2:g}: train {train_acc:.4f}, test {test_acc:.4f}")
    dense = args.run / "metrics_dense.json"
    if dense.exists():
        print(f"dense CNN of the demo ({args.run}): test {json.loads(dense.read_text())['Accuracy']:.4f}")


if __name__ == "__main__":
    main()
