"""Batched image transforms in torch, on whatever device the batch is on.

torchvision's transforms work one image at a time on the CPU (and its wheels cannot be used
on every machine this project runs on); these take a whole batch (N, C, H, W), draw every
random number from a ``torch.Generator`` on the CPU (so a batch's augmentation depends only
on (seed, epoch, rank)) and apply the result on the batch's device. Definitions:

- random crop with zero padding ``p``: pad by ``p`` on every side, cut an H x W window at a
  uniform offset in [0, 2p] x [0, 2p] (torchvision's RandomCrop(size, padding=p));
- horizontal flip with probability 1/2;
- cutout ``k``: zero a k x k square whose centre is uniform over the image, clipped at the
  border (DARTS's Cutout);
- random resized crop: area fraction uniform in [0.08, 1], log aspect ratio uniform in
  [log 3/4, log 4/3], position uniform among those that fit (10 tries, then the central crop
  of the clamped ratio, as torchvision), resized bilinearly to the output size;
- colour jitter (brightness b, contrast c, saturation s, hue h): factors uniform in
  [1-b, 1+b] etc., hue shift uniform in [-h, h] turns of the hue circle, applied in
  torchvision's fixed order brightness, contrast, saturation, hue on [0, 1] images;
- evaluation resize-and-centre-crop: resize the shorter side to size x 256/224, cut the
  central size x size (the ImageNet convention).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Pad with zeros by ``padding`` and cut back to the input size at a random offset."""
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=gen).to(x.device, non_blocking=True)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=gen).to(x.device, non_blocking=True)
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, c, h, w + 2 * padding)
    out = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, c, h, w)
    return out.gather(3, cols)


def hflip(x: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    flip = (torch.rand(x.shape[0], generator=gen) < p).to(x.device, non_blocking=True).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(3), x)


def cutout(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Zero one random ``size`` x ``size`` square per image (DeVries & Taylor, 2017), as DARTS
    draws it: the centre is uniform over the image and the square is clipped at the border."""
    if size <= 0:
        return x
    n, _, h, w = x.shape
    top = (torch.randint(0, h, (n,), generator=gen) - size // 2).to(x.device, non_blocking=True).view(n, 1, 1)
    left = (torch.randint(0, w, (n,), generator=gen) - size // 2).to(x.device, non_blocking=True).view(n, 1, 1)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def resized_crop_boxes(n: int, h: int, w: int, gen: torch.Generator, scale=(0.08, 1.0),
                       ratio=(3 / 4, 4 / 3), tries: int = 10) -> torch.Tensor:
    """(n, 4) boxes (top, left, height, width) in pixels, drawn as torchvision's
    RandomResizedCrop.get_params draws one, for n images at once (on the CPU, as the
    generator is; no value is read back)."""
    area = h * w
    in_ratio = w / h  # torchvision's fallback: the central crop of the clamped ratio
    if in_ratio < ratio[0]:
        fw, fh = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        fh, fw = h, round(h * ratio[1])
    else:
        fw, fh = w, h
    boxes = torch.stack([torch.full((n,), float(v)) for v in ((h - fh) // 2, (w - fw) // 2, fh, fw)], 1)
    done = torch.zeros(n, dtype=torch.bool)
    for _ in range(tries):
        target = area * _uniform(n, scale[0], scale[1], gen)
        log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), gen)
        aspect = torch.exp(log_r)
        bw = torch.round(torch.sqrt(target * aspect))
        bh = torch.round(torch.sqrt(target / aspect))
        ok = (bw > 0) & (bh > 0) & (bw <= w) & (bh <= h) & ~done
        top = torch.floor(torch.rand(n, generator=gen) * (h - bh + 1).clamp(min=1))
        left = torch.floor(torch.rand(n, generator=gen) * (w - bw + 1).clamp(min=1))
        boxes = torch.where(ok.unsqueeze(1), torch.stack([top, left, bh, bw], 1), boxes)
        done |= ok
    return boxes


def crop_and_resize(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Cut each image's box (top, left, height, width) and resize it bilinearly to size x size
    (one grid_sample for the batch)."""
    n, _, h, w = x.shape
    b = boxes.to(x.device, torch.float32, non_blocking=True)
    top, left, bh, bw = b.unbind(1)
    # pixel centres of the output in input coordinates, normalised to [-1, 1] (align_corners=False)
    steps = (torch.arange(size, device=x.device, dtype=torch.float32) + 0.5) / size
    ys = (top.view(n, 1) + steps.view(1, size) * bh.view(n, 1)) / h * 2 - 1
    xs = (left.view(n, 1) + steps.view(1, size) * bw.view(n, 1)) / w * 2 - 1
    grid = torch.stack([xs.view(n, 1, size).expand(n, size, size), ys.view(n, size, 1).expand(n, size, size)], 3)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    return crop_and_resize(x, resized_crop_boxes(x.shape[0], x.shape[2], x.shape[3], gen), size)


def stored_size(image_size: int) -> int:
    """The side images are stored at for crops of ``image_size`` (the 256/224 convention)."""
    return round(image_size * 256 / 224)


def resize_center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Evaluation: shorter side to stored_size(size), then the central size x size."""
    _, _, h, w = x.shape
    short = stored_size(size)
    nh, nw = (short, round(w * short / h)) if h <= w else (round(h * short / w), short)
    x = F.interpolate(x.float(), size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[:, :, top:top + size, left:left + size]


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp(min=1e-12), torch.zeros_like(maxc))
    d = delta.clamp(min=1e-12)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros_like(x)
    for k, (r, g, b) in enumerate(choices):
        mask = (i == k).unsqueeze(1)
        out = torch.where(mask, torch.stack([r, g, b], 1), out)
    return out


def color_jitter(x: torch.Tensor, gen: torch.Generator, brightness: float = 0.4, contrast: float = 0.4,
                 saturation: float = 0.4, hue: float = 0.2) -> torch.Tensor:
    """torchvision's ColorJitter on [0, 1] RGB images, every image its own factors (the order
    of the four is fixed here: brightness, contrast, saturation, hue)."""
    n = x.shape[0]
    view = (n, 1, 1, 1)
    fb = _uniform(n, 1 - brightness, 1 + brightness, gen).to(x.device, non_blocking=True).view(view)
    fc = _uniform(n, 1 - contrast, 1 + contrast, gen).to(x.device, non_blocking=True).view(view)
    fs = _uniform(n, 1 - saturation, 1 + saturation, gen).to(x.device, non_blocking=True).view(view)
    fh = _uniform(n, -hue, hue, gen).to(x.device, non_blocking=True).view(n, 1, 1)
    x = (x * fb).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (fc * x + (1 - fc) * mean).clamp(0, 1)
    x = (fs * x + (1 - fs) * _gray(x)).clamp(0, 1)
    hsv = rgb_to_hsv(x)
    hsv = torch.stack([(hsv[:, 0] + fh) % 1.0, hsv[:, 1], hsv[:, 2]], 1)
    return hsv_to_rgb(hsv).clamp(0, 1)
