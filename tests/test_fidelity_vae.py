"""Fidelity-oriented encoding E*(I) = x_r + M (x_r - x_rr) (Rerender-A-Video Eq. 8-9)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vedit.ops.vae import backbone_fidelity_encode, compensation_mask, fidelity_encode


def block_image(values: torch.Tensor) -> torch.Tensor:
    """(B, 3, h, w) -> (B, 3, 8h, 8w): constant on 8x8 blocks, so a pooling encoder is lossless."""
    return values.repeat_interleave(8, dim=-2).repeat_interleave(8, dim=-1)


def lossy_codec(gain: torch.Tensor, bias: float = 0.0):
    """A linear autoencoder that loses the same fraction each round: E = 8x8 mean, D = gain * up(z) + bias."""
    def encode(images: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(images, 8)

    def decode(z: torch.Tensor) -> torch.Tensor:
        return (block_image(gain * z) + bias).clamp(0, 1)

    return encode, decode


def test_formula_on_a_codec_with_constant_loss():
    torch.manual_seed(0)
    values = 0.2 + 0.6 * torch.rand(1, 3, 4, 4, dtype=torch.float64)
    encode, decode = lossy_codec(torch.tensor(0.9, dtype=torch.float64), bias=0.05)
    out = fidelity_encode(block_image(values), encode, decode)
    # x_r = v, x_rr = 0.9 v + 0.05 -> x_r + (x_r - x_rr) = 1.1 v - 0.05, and it decodes within 0.25
    torch.testing.assert_close(out, 1.1 * values - 0.05, rtol=0, atol=1e-12)


def test_mask_rejects_cells_where_compensation_overshoots():
    values = torch.full((1, 3, 6, 6), 0.5, dtype=torch.float64)
    gain = torch.full((1, 1, 6, 6), 0.95, dtype=torch.float64)
    gain[..., 1, 1] = 0.4  # decodes (0.4 * 1.6) * 0.5 = 0.32 vs 0.5: error 0.36 in [-1, 1] units > 0.25
    encode, decode = lossy_codec(gain)
    out = fidelity_encode(block_image(values), encode, decode)
    expected = (2 - gain) * values  # compensated everywhere ...
    expected[..., 0:3, 0:3] = values[..., 0:3, 0:3]  # ... except the bad cell dilated by one cell
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_compensation_mask_threshold_is_in_minus_one_one_units_and_dilated():
    images = torch.full((1, 3, 32, 32), 0.5)
    decoded = images.clone()
    decoded[0, :, 3, 3] += 0.1  # 0.2 in [-1, 1] units: kept
    decoded[0, :, 20, 29] += 0.14  # 0.28: rejected (cell (2, 3)), dilated to rows 1..3, cols 2..3
    mask = compensation_mask(images, decoded, (4, 4), threshold=0.25, rule="any_pixel")
    expected = torch.ones(1, 1, 4, 4)
    expected[0, 0, 1:4, 2:4] = 0
    assert torch.equal(mask, expected)


def test_released_rule_reads_the_centre_pixels_of_a_cell_and_any_pixel_every_pixel():
    """The released code samples the error map bilinearly at 1/8 scale: a cell sees its centre 2x2 pixels."""
    images = torch.full((1, 3, 48, 48), 0.5)
    decoded = images.clone()
    decoded[0, :, 8, 8] += 0.2  # corner pixel of cell (1, 1), 0.4 in [-1, 1] units
    decoded[0, :, 35, 36] += 0.2  # a centre pixel (rows/cols 3..4 of the cell) of cell (4, 4)
    released = compensation_mask(images, decoded, (6, 6))  # the default rule
    any_pixel = compensation_mask(images, decoded, (6, 6), rule="any_pixel")
    expected = torch.ones(1, 1, 6, 6)
    expected[0, 0, 3:6, 3:6] = 0  # cell (4, 4) dilated by one cell
    assert torch.equal(released, expected)
    expected[0, 0, 0:3, 0:3] = 0  # ... and cell (1, 1)
    assert torch.equal(any_pixel, expected)
    with pytest.raises(ValueError, match="rule"):
        compensation_mask(images, decoded, (6, 6), rule="centre")


def test_less_error_growth_than_plain_encoding_over_five_rounds():
    torch.manual_seed(1)
    source = block_image(0.2 + 0.6 * torch.rand(2, 3, 4, 4, dtype=torch.float64))
    encode, decode = lossy_codec(torch.tensor(0.9, dtype=torch.float64), bias=0.05)
    plain, fidelity = source, source
    for _ in range(5):
        plain = decode(encode(plain))
        fidelity = decode(fidelity_encode(fidelity, encode, decode))
    err_plain = (plain - source).abs().mean()
    err_fidelity = (fidelity - source).abs().mean()
    assert err_fidelity < 0.2 * err_plain, (err_fidelity, err_plain)


def centre_or_any(bad: torch.Tensor, rule: str) -> torch.Tensor:
    """Per 8x8 cell: any of its centre 2x2 pixels (released) or any of its pixels (any_pixel)."""
    if rule == "any_pixel":
        return F.max_pool2d(bad, 8)
    return torch.stack([bad[..., r::8, c::8] for r in (3, 4) for c in (3, 4)]).amax(0)


@pytest.mark.parametrize("rule", ["released", "any_pixel"])
def test_tiny_vae_keeps_compensation_only_where_it_decodes_close(rule):
    from vedit.backbones import build_backbone

    bb = build_backbone("tiny", "sd15", dtype="float64")
    torch.manual_seed(2)
    images = 0.5 + 0.05 * torch.rand(1, 3, 64, 64, dtype=torch.float64)
    x_r = bb.encode_images(images)
    compensated = 2 * x_r - bb.encode_images(bb.decode_latents(x_r))
    err = 2 * (bb.decode_latents(compensated) - images).abs().mean(1, keepdim=True)
    seen = set()
    for threshold in (0.25, 0.5, 0.75, 1.0):  # the random tiny VAE is poor: vary the threshold
        out = backbone_fidelity_encode(bb, images, threshold=threshold, rule=rule)
        bad_cells = F.max_pool2d(centre_or_any((err > threshold).double(), rule), 3, stride=1, padding=1) > 0
        torch.testing.assert_close(out, torch.where(bad_cells, x_r, compensated), rtol=0, atol=1e-12)
        seen |= set(bad_cells.flatten().tolist())
    assert seen == {True, False}
