"""Learned position embeddings: their sin-cos initialisation, and resizing one to another grid
(the authors' 224 weights at another input size); a window's relative position bias table
resized to another window."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def sincos_position_embedding(height: int, width: int, channels: int) -> torch.Tensor:
    """(height*width, channels): token i*width + j gets sin(j w), cos(j w), sin(i w), cos(i w),
    w_k = 10000^(-k/(channels/4)): the column index first, as the code's helper does; computed
    in float64 and rounded to float32, as the code does."""
    quarter = channels // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    by_col, by_row = np.outer(cols.reshape(-1), omega), np.outer(rows.reshape(-1), omega)
    table = np.concatenate([np.sin(by_col), np.cos(by_col), np.sin(by_row), np.cos(by_row)], axis=1)
    return torch.from_numpy(table).float()


def resize_position_embedding(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, g*g, C) from a square g x g grid -> (1, gh*gw, C), bicubic with antialiasing, in
    float32, as timm's `resample_abs_pos_embed` does (the result stays float32, so an fp16
    checkpoint is not rounded twice)."""
    side = math.isqrt(table.shape[1])
    channels = table.shape[-1]
    image = table.float().reshape(1, side, side, channels).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=grid, mode="bicubic", antialias=True, align_corners=False)
    return image.permute(0, 2, 3, 1).reshape(1, -1, channels)


def resize_relative_position_table(table: torch.Tensor, window: int) -> torch.Tensor:
    """((2w-1)^2, heads) for a w x w window -> ((2*window-1)^2, heads), bicubic over the grid of
    relative offsets in float32, as timm resizes Swin's tables for another window."""
    side, heads = math.isqrt(table.shape[0]), table.shape[1]
    grid = table.float().T.reshape(1, heads, side, side)
    grid = F.interpolate(grid, size=(2 * window - 1, 2 * window - 1), mode="bicubic", align_corners=False)
    return grid.reshape(heads, -1).T
