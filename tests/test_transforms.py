"""Batched augmentation against its definitions: crop offsets, flip probability, cutout size,
resized-crop boxes, colour jitter's operations, evaluation crop; determinism per generator."""
import colorsys
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from goldnas_ray.data import Augment, epoch_generator, iterate_batches
from goldnas_ray.data import transforms as T


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_random_crop_is_a_window_of_the_zero_padded_image():
    x = torch.rand(300, 3, 8, 8) + 1  # never zero, so padding shows
    out = T.random_crop(x, 2, gen())
    padded = F.pad(x, (2, 2, 2, 2))
    offsets = []
    for img, src in zip(out, padded):
        found = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(img, src[:, dy:dy + 8, dx:dx + 8])]
        assert len(found) == 1
        offsets.append(found[0])
    assert {dy for dy, _ in offsets} == set(range(5)) == {dx for _, dx in offsets}  # every offset used


def test_flip_probability_is_one_half():
    x = torch.arange(4.0).view(1, 1, 1, 4).expand(4000, 1, 1, 4).contiguous()
    out = T.hflip(x, gen())
    flipped = (out[:, 0, 0, 0] == 3).float().mean().item()
    assert abs(flipped - 0.5) < 0.03  # 4000 draws: 4 standard deviations
    assert torch.equal(out[out[:, 0, 0, 0] == 3], x.flip(3)[out[:, 0, 0, 0] == 3])


def test_resized_crop_boxes_follow_the_scale_and_ratio_ranges():
    boxes = T.resized_crop_boxes(5000, 64, 80, gen())
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 64).all() and (left + w <= 80).all()
    area = h * w / (64 * 80)
    assert area.min() >= 0.07 and area.max() <= 1.0 and 0.45 < area.mean() < 0.6
    ratio = w / h
    assert ratio.min() > 0.7 and ratio.max() < 1.4


def test_crop_and_resize_of_the_whole_image_is_the_image():
    x = torch.rand(2, 3, 16, 16)
    out = T.crop_and_resize(x, torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 2), 16)
    assert torch.allclose(out, x, atol=1e-5)
    half = T.crop_and_resize(x, torch.tensor([[0.0, 8.0, 16.0, 8.0]] * 2), 8)  # right half, halved rows
    assert torch.allclose(half, F.interpolate(x[:, :, :, 8:], size=(8, 8), mode="bilinear",
                                              align_corners=False), atol=1e-5)


def test_colour_operations_match_their_definitions():
    torch.manual_seed(0)
    x = torch.rand(50, 3, 4, 4)
    hsv = T.rgb_to_hsv(x)
    for n, i, j in [(0, 0, 0), (7, 1, 2), (49, 3, 3)]:
        r, g, b = x[n, :, i, j].tolist()
        assert hsv[n, :, i, j].tolist() == pytest.approx(colorsys.rgb_to_hsv(r, g, b), abs=1e-5)
    assert torch.allclose(T.hsv_to_rgb(hsv), x, atol=1e-5)
    # brightness only: a blend with black by the drawn factor
    g1, g2 = gen(3), gen(3)
    out = T.color_jitter(x, g1, brightness=0.4, contrast=0, saturation=0, hue=0)
    factors = 0.6 + 0.8 * torch.rand(50, generator=g2)
    assert torch.allclose(out, (x * factors.view(-1, 1, 1, 1)).clamp(0, 1), atol=1e-5)
    # all four ranges 0: every factor is 1 and the hue shift 0, the identity
    same = T.color_jitter(x, gen(), brightness=0, contrast=0, saturation=0, hue=0)
    assert torch.allclose(same, x, atol=1e-5)
    # a hue shift of h turns: hue moves by h, saturation and value stay
    shifted = T.hsv_to_rgb(torch.stack([(hsv[:, 0] + 0.25) % 1, hsv[:, 1], hsv[:, 2]], 1))
    back = T.rgb_to_hsv(shifted)
    assert torch.allclose(back[:, 1:], hsv[:, 1:], atol=1e-5)


def test_eval_crop_resizes_the_shorter_side_then_cuts_the_centre():
    x = torch.zeros(1, 3, 64, 96)
    x[:, :, 28:36, 44:52] = 1  # a central square
    out = T.resize_center_crop(x, 28)
    assert out.shape == (1, 3, 28, 28)  # 64 -> 32 (= 28 x 256/224), 96 -> 48, centre 28 x 28
    assert out[0, 0, 14, 14] > 0.5 and out[0, 0, 0, 0] < 1e-6


def test_an_epochs_augmented_batches_depend_on_seed_epoch_and_rank_only():
    x = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    y = torch.arange(64)
    aug = Augment(crop_padding=4, flip=True, cutout=6, color_jitter=True)
    a = list(iterate_batches(x, y, 16, 1, 3, rank=1, world_size=2, augment=aug, mean=(0.5,) * 3, std=(0.25,) * 3))
    torch.manual_seed(123)
    b = list(iterate_batches(x, y, 16, 1, 3, rank=1, world_size=2, augment=aug, mean=(0.5,) * 3, std=(0.25,) * 3))
    c = list(iterate_batches(x, y, 16, 1, 4, rank=1, world_size=2, augment=aug, mean=(0.5,) * 3, std=(0.25,) * 3))
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    assert a[0][0].dtype == torch.float32 and math.isclose(float(a[0][0].max()), 2.0, abs_tol=1e-5)
    assert epoch_generator(1, 3, 1).initial_seed() != epoch_generator(1, 3, 0).initial_seed()
    assert np.isfinite(a[0][0].numpy()).all()
