"""Running a model over the data to compute the paper's metrics (spec §10), in bounded memory."""

from __future__ import annotations

import torch

from . import metrics
from .data.base import DatasetInfo, ImageListDataset
from .device import Device
from .model import QResNet
from .progress import progress
from .training import make_loader


@torch.no_grad()
def evaluate_metrics(
    model: QResNet,
    train_eval_set: ImageListDataset,
    test_set: ImageListDataset,
    info: DatasetInfo,
    *,
    device: Device,
    batch_size: int,
    workers: int,
) -> dict:
    """Accuracy, NFfeatures, PerClass, diversity@5 (reference and corrected), Dependence, Alignment.

    Training images (test transform, dataset order) give Dependence and Alignment; test images
    give Accuracy and diversity. Per-batch reductions keep memory flat; only Alignment keeps
    the training set's pooled features, and only when the dataset has attribute annotations.
    Alignment is computed for every dataset with an attribute file (CUB, TravelingBirds, the
    embedded dataset), not by the reference's "fewer than 7000 training images" guess (odd-Q).
    """
    model.eval()
    weight = model.head_weight.detach().float()
    used = metrics.used_features(weight)
    weight_used = weight[:, used]
    keep_pooled = info.attributes_file is not None

    shares, pooled_rows = [], []
    for images, _ in _batches(train_eval_set, "metrics (train)", batch_size, workers):
        out = model(device.batch(images))
        shares.append(metrics.top_feature_shares(out.pooled.float(), out.logits, weight).cpu())
        if keep_pooled:
            pooled_rows.append(out.pooled.float().cpu())

    correct = seen = 0
    locality, locality_fixed = [], []
    for images, labels in _batches(test_set, "metrics (test)", batch_size, workers):
        out = model(device.batch(images))
        maps_used = out.feature_maps[:, used.to(out.feature_maps.device)]
        locality.append(metrics.locality(maps_used, out.logits, weight_used).cpu())
        locality_fixed.append(metrics.locality(maps_used, out.logits, weight_used, corrected=True).cpu())
        correct += (out.logits.argmax(1).cpu() == labels).sum().item()
        seen += len(labels)

    n_train = len(train_eval_set)
    alignment = None
    if info.attributes_file is not None:
        features = torch.cat(pooled_rows)
        # CUB layouts (the only ones with attribute files) carry their image ids.
        positions, attributes, present = metrics.read_attribute_labels(
            info.attributes_file, train_eval_set.image_ids or []
        )
        n_attributes = len(info.attribute_names) or int(attributes.max()) + 1
        alignment = metrics.alignment(features, positions, attributes, present, n_attributes)

    result = metrics.summarize(
        accuracy=correct / max(seen, 1),
        weight=weight,
        diversity=metrics.diversity(torch.cat(locality), n_train=n_train),
        dependence=metrics.dependence_from_shares(torch.cat(shares)),
        alignment=alignment,
    )
    result["diversity_corrected"] = metrics.diversity(torch.cat(locality_fixed))
    return result


def _batches(dataset: ImageListDataset, desc: str, batch_size: int, workers: int):
    loader = make_loader(dataset, batch_size, shuffle=False, workers=workers)
    return progress(loader, desc=desc)
