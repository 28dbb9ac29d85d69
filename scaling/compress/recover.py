"""Recovery fine-tuning after pruning: a plain torch loop on the task loss.

This is the seam for distillation: once `scaling.compress.distill` exists, recovery with a teacher (the
unpruned model) should go through it instead; this loop only uses labels from the data.
"""

from __future__ import annotations

from typing import Any

from scaling.compress.config import PruneConfig
from scaling.compress.data import read_documents
from scaling.compress.feed import block_batches, cls_batches, lm_blocks


def recover(model: Any, loaded: Any, cfg: PruneConfig, masks: dict[str, Any] | None) -> dict[str, Any]:
    """`cfg.recover_steps` AdamW steps; pruned weights stay zero (masks reapplied after each step)."""
    import torch

    assert cfg.recover_data is not None
    task = loaded.task
    if task == "seq-cls":
        docs = read_documents(cfg.recover_data, label_column=cfg.label_column)
        batches = cls_batches(docs, loaded.tokenizer, cfg.seq_len, 8)
    else:
        blocks = lm_blocks(
            read_documents(cfg.recover_data), loaded.tokenizer, cfg.seq_len, cfg.recover_steps * 8
        )
        batches = block_batches(blocks, 8)
    layers = dict(model.named_modules())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.recover_lr)
    gen = torch.Generator().manual_seed(0)
    model.train()
    losses = []
    for step in range(cfg.recover_steps):
        b = batches[step % len(batches)]
        loss = _loss(model, loaded, task, b, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if masks:
            with torch.no_grad():
                for name, mask in masks.items():
                    layers[name].weight.mul_(mask)
        losses.append(loss.item())
    model.eval()
    return {
        "steps": cfg.recover_steps,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "lr": cfg.recover_lr,
    }


def _loss(model: Any, loaded: Any, task: str, b: Any, gen: Any) -> Any:
    import torch

    if task == "seq-cls":
        return model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels).loss
    if task == "mlm":
        chosen = torch.rand(b.input_ids.shape, generator=gen) < 0.15
        labels = b.input_ids.masked_fill(~chosen, -100)
        inputs = b.input_ids.masked_fill(chosen, loaded.tokenizer.mask_token_id)
        return model(input_ids=inputs, attention_mask=b.attention_mask, labels=labels).loss
    return model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.input_ids).loss
