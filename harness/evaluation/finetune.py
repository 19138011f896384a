"""The semi-supervised protocol: fine-tune backbone and classifier on a label subset.

As the authors' evaluate.py with `--weights finetune`: the backbone in train mode (its
BatchNorm statistics adapt), a Linear head (weights N(0, 0.01), bias 0), SGD with momentum,
one learning rate for the backbone and another for the head, per-step cosine decay, crops +
flips of exactly the images in the subset list `harness prep` wrote (drawn outside the
validation list), every image every epoch. Evaluated on val and test (centre crop).
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from harness.data import labelled_loader
from harness.evaluation.data import EvalData, indices_digest
from harness.evaluation.features import extract_features
from harness.evaluation.linear import even_batch, split_metrics
from harness.evaluation.settings import EvalSettings
from harness.optim import lr_at
from harness.precision import autocast_for

__all__ = ["finetune"]


def finetune(backbone: nn.Module, feature_dim: int, data: EvalData, subset: str, *,
             settings: EvalSettings, device: torch.device) -> tuple[dict, dict]:
    """(metrics, settings used) of fine-tuning a copy of `backbone` on `subset`."""
    s = settings
    indices = data.subset_indices(subset)
    if len(indices) < 2:
        raise ValueError(f"{data.data_dir}: subset {subset} holds {len(indices)} image(s); "
                         "fine-tuning needs at least 2")
    torch.manual_seed(s.seed)
    model = copy.deepcopy(backbone).to(device)
    head = nn.Linear(feature_dim, data.num_classes).to(device)
    head.weight.data.normal_(mean=0.0, std=0.01)
    head.bias.data.zero_()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    batch = even_batch(len(indices), s.batch_size)
    loader = labelled_loader(data.part("train").path, batch_size=batch,
                             resolution=data.resolution, device=device,
                             num_workers=s.loader_workers, seed=s.seed, indices=indices,
                             distributed=False, drop_last=False, passes=s.semi_epochs)
    lrs = (s.semi_lr_backbone, s.semi_lr_head)
    optimizer = torch.optim.SGD([{"params": model.parameters(), "lr": lrs[0]},
                                 {"params": head.parameters(), "lr": lrs[1]}],
                                momentum=0.9, weight_decay=s.semi_weight_decay)
    total = s.semi_epochs * len(loader)
    seen = Counter()
    step = 0
    model.train()
    for epoch in range(s.semi_epochs):
        for images, labels in loader:
            for group, lr in zip(optimizer.param_groups, lrs):  # per-step cosine to 0
                group["lr"] = lr_at(step, total_steps=total, warmup_steps=0, base_lr=lr,
                                    end_factor=0.0)
            with autocast_for(device):
                features = model(images)
            loss = F.cross_entropy(head(features.float()), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if epoch == 0:
                seen.update(labels.tolist())
            step += 1
    scores = {}
    for role in ("val", "test"):
        part = data.part(role)
        f, y = extract_features(model, part.path, indices=part.indices,
                                resolution=data.resolution, batch_size=s.batch_size,
                                device=device, num_workers=s.loader_workers)
        with torch.no_grad():
            scores[role] = (head(f.to(device)).cpu(), y)
    return (split_metrics(scores),
            {"final_train_loss": loss.item(), "subset": subset,
             "subset_file": data.manifest["subsets"][subset]["file"],
             "train_images": len(indices), "train_indices_sha256": indices_digest(indices),
             "first_epoch_labels": {int(k): v for k, v in sorted(seen.items())},
             "first_epoch_images": sum(seen.values()),
             "epochs": s.semi_epochs, "lr_backbone": lrs[0], "lr_head": lrs[1],
             "weight_decay": s.semi_weight_decay, "batch_size": batch, "steps": step})
