"""Adapting pretrained weights to a model (another class count, grid, patch size, channels, pooling or tokenizer)
and the table that says what happened to every tensor."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from timm.layers import resample_patch_embed
from timm.models import adapt_input_conv
from torch import nn

from ..pos_embed import infer_grid, resample


@dataclass
class LoadReport:
    """What happened to each tensor: action -> list of (key, detail)."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (key, action, detail)

    def add(self, key: str, action: str, detail: str = "") -> None:
        self.rows.append((key, action, detail))

    def keys(self, action: str) -> list[str]:
        return [k for k, a, _ in self.rows if a == action]

    def table(self) -> str:
        """One line per tensor; the loaded ones are summarised in one line."""
        loaded = self.keys("loaded")
        lines = [f"{'tensor':<40} {'action':<15} detail", "-" * 80]
        lines += [f"{k:<40} {a:<15} {d}" for k, a, d in self.rows if a != "loaded"]
        lines.append(f"{f'({len(loaded)} tensors)':<40} {'loaded':<15} as they are")
        return "\n".join(lines)


def _adapt_tokenizer(model: nn.Module, state: dict, own: dict, report: LoadReport) -> None:
    ckpt_keys = {k for k in state if k.startswith("patch_embed.")}
    own_keys = {k for k in own if k.startswith("patch_embed.")}
    if ckpt_keys != own_keys:  # another tokenizer: transplant the encoder, start the tokenizer fresh
        for k in sorted(ckpt_keys):
            state.pop(k)
            report.add(k, "dropped", "tokenizer differs (transplant)")
        for k in sorted(own_keys):
            state[k] = own[k]
            report.add(k, "re-initialised", f"new {model.cfg.tokenizer} tokenizer (transplant)")
        return
    for k in sorted(ckpt_keys):
        w, target = state[k], own[k]
        if w.shape == target.shape or w.ndim != 4:
            continue
        if w.shape[1] != target.shape[1] and w.shape[0] == target.shape[0]:  # other in_chans: timm's rule
            w = adapt_input_conv(target.shape[1], w)
            report.add(k, "adapted", f"in_chans {state[k].shape[1]} -> {target.shape[1]}")
        if w.shape[-2:] != target.shape[-2:] and k == "patch_embed.proj.weight":  # other patch size
            report.add(k, "resampled", f"patch {tuple(w.shape[-2:])} -> {tuple(target.shape[-2:])}")
            w = resample_patch_embed(w, list(target.shape[-2:]))
        state[k] = w


def _adapt_pool(model: nn.Module, state: dict, own: dict, report: LoadReport) -> None:
    for src, dst in (("norm", "fc_norm"), ("fc_norm", "norm")):  # cls <-> avg: the final norm moves
        for p in ("weight", "bias"):
            if f"{src}.{p}" in state and f"{src}.{p}" not in own and f"{dst}.{p}" in own:
                state[f"{dst}.{p}"] = state.pop(f"{src}.{p}")
                report.add(f"{dst}.{p}", "adapted", f"from {src}.{p} (pooling changed)")
    if "cls_token" in state and "cls_token" not in own:
        state.pop("cls_token")
        report.add("cls_token", "dropped", "model has no class token")
    if "dist_token" in state and "dist_token" not in own:
        state.pop("dist_token")
        report.add("dist_token", "dropped", "model is not distilled")
    if "dist_token" in own and "dist_token" not in state:
        state["dist_token"] = own["dist_token"]
        report.add("dist_token", "re-initialised", "distillation token is new")
    for k in sorted(own):
        if k.startswith("seq_pool.") and k not in state:
            state[k] = own[k]
            report.add(k, "re-initialised", "sequence pooling is new")


def _adapt_pos_embed(model: nn.Module, state: dict, own: dict, report: LoadReport) -> None:
    """Resample the image rows of a learned table to the model's grid; keep, or drop, the prefix rows."""
    pos, target = state.get("pos_embed"), own.get("pos_embed")
    if pos is not None and target is None:  # the model computes its positions (sin-cos) or has none
        state.pop("pos_embed")
        fixed = getattr(model, "pos_embed", None)
        same = fixed is not None and fixed.shape == pos.shape and torch.allclose(fixed, pos.to(fixed), atol=1e-6)
        report.add("pos_embed", "dropped", f"model uses pos_embed={model.cfg.pos_embed!r}"
                   + (" (the table equals its sin-cos positions)" if same else ""))
        return
    if pos is None or target is None or pos.shape == target.shape:
        return
    n_prefix = (int("cls_token" in state) + int("dist_token" in state)
                + (state["reg_token"].shape[1] if "reg_token" in state else 0))
    rows = pos.shape[1]
    if int(round((rows - n_prefix) ** 0.5)) ** 2 != rows - n_prefix:
        n_prefix = 0  # the table covers image tokens only (no_embed_class)
    prefix, image = pos[:, :n_prefix], pos[:, n_prefix:]
    old_grid = infer_grid(image.shape[1], 0)
    image = resample(image, model.grid, old_grid, 0)
    if old_grid != tuple(model.grid):
        report.add("pos_embed", "resampled", f"grid {old_grid} -> {tuple(model.grid)} (bicubic)")
    if n_prefix != model.pos_prefix:
        if model.pos_prefix == 0:
            prefix = prefix[:, :0]
        elif "dist_token" in state and "dist_token" not in own and n_prefix - 1 == model.pos_prefix:
            dist = int("cls_token" in state)  # the distillation row follows the class row
            prefix = torch.cat([prefix[:, :dist], prefix[:, dist + 1:]], dim=1)
        elif "dist_token" in own and "dist_token" not in state and n_prefix + 1 == model.pos_prefix:
            dist = int("cls_token" in own)  # a new distillation row after the class row: the model's own init
            prefix = torch.cat([prefix[:, :dist], target[:, dist:dist + 1].to(prefix), prefix[:, dist:]], dim=1)
        elif "cls_token" in state and "cls_token" not in own and n_prefix - 1 == model.pos_prefix:
            prefix = prefix[:, 1:]
        report.add("pos_embed", "adapted", f"prefix rows {n_prefix} -> {prefix.shape[1]}")
    state["pos_embed"] = torch.cat([prefix, image], dim=1)


def _adapt_head(model: nn.Module, state: dict, own: dict, report: LoadReport) -> None:
    for k in (f"{head}.{p}" for head in ("head", "head_dist") for p in ("weight", "bias")):
        if k in state and (k not in own or state[k].shape != own[k].shape):
            old = state.pop(k)
            if k in own:
                state[k] = own[k]
                report.add(k, "re-initialised", f"classes {old.shape[0]} -> {own[k].shape[0]}")
            elif k.startswith("head_dist.") and getattr(model, "head_dist", None) is None:
                report.add(k, "dropped", "model is not distilled")
            else:
                report.add(k, "dropped", "model has no head (num_classes=0)")
        elif k in own and k not in state:
            state[k] = own[k]
            report.add(k, "re-initialised", "checkpoint has no head")


def adapt_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> LoadReport:
    """Make ``state`` fit ``model`` where that makes sense (in place), recording every change."""
    own = model.state_dict()
    report = LoadReport()
    _adapt_tokenizer(model, state, own, report)
    _adapt_pos_embed(model, state, own, report)
    _adapt_pool(model, state, own, report)
    _adapt_head(model, state, own, report)
    changed = {k for k, _, _ in report.rows}
    for k in sorted(set(state) & set(own) - changed):
        report.add(k, "loaded")
    return report

