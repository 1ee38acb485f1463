"""The per-picture vector the domain score reads: summaries of two of the backbone's feature maps.

The last map, averaged over its positions, says what the picture shows as the
captioner sees it; alone it missed pictures whose content is simply different
at a finer scale: uniform noise and other grain land among the generated
world's textured backgrounds there. The map before it (ResNet's layer3) still
sees texture, and the spread of a channel over the positions (its standard
deviation) tells an even picture from a busy one. Lee et al. (2018) score
several layers for the same reason. And every picture of the world has at least
one object standing out from its background, while an empty picture (one colour,
a gradient, fine grain: the world's own backgrounds with nothing on them) has
none, yet lies close to the world's mean, and the captioner still names a shape
in it. So the vector is, in this order:

    layer4_mean      (C4)   the last map's per-channel mean (for a grid: the mean of its cells;
                            the one vector scored before there were blocks, hence first)
    layer3_mean_std  (2*C3) layer3's per-channel mean, then its per-channel standard deviation
    layer4_contrast  (1)    how much the most distinct position of the last map stands out:
                            log(max_p |x_p - mean| / |mean|) over its h * w positions

`model/domain.py` fits one Gaussian per block and scores each image by the block
that finds it furthest out, so each layer is judged on its own scale.
Everything here is fp32, whatever precision the backbone ran in.
"""

from __future__ import annotations

import torch

# Blocks in their order in the vector: a statistics file's blocks are a leading run of these.
DOMAIN_BLOCKS = ("layer4_mean", "layer3_mean_std", "layer4_contrast")
_TINY = 1e-6  # keeps the contrast finite: a one-position map (or an all-zero one) has log(_TINY)


def domain_layout(channels: int, middle_channels: int) -> dict[str, int]:
    """Each block's size, in order, for a backbone of `channels` (layer4) and `middle_channels` (layer3)."""
    return {"layer4_mean": channels, "layer3_mean_std": 2 * middle_channels, "layer4_contrast": 1}


def contrast(last_map: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, 1): log of how far the most distinct position is from the map's mean, relative to it.

    A map of one position (a small input) has no contrast: every picture gets
    the same value, and `model.domain.fit_domain_statistics` leaves the block out.
    """
    positions = last_map.float().flatten(2).transpose(1, 2)  # (B, h*w, C)
    centre = positions.mean(dim=1, keepdim=True)  # (B, 1, C)
    furthest = (positions - centre).norm(dim=2).amax(dim=1)  # (B,)
    return torch.log(furthest / (centre.squeeze(1).norm(dim=1) + _TINY) + _TINY)[:, None]


def domain_features(features: torch.Tensor, last_map: torch.Tensor, middle_map: torch.Tensor) -> torch.Tensor:
    """The (B, D) fp32 domain features of a batch of pictures.

    Args:
        features: the encoder's (B, C4) pooled or (B, G*G, C4) grid features; the grid's cells are
            averaged (so `layer4_mean` is what the one-block statistics were fitted on).
        last_map: layer4's (B, C4, h, w) map, for the contrast.
        middle_map: layer3's (B, C3, h', w') map; its mean and (population) standard deviation
            are taken over its positions.
    """
    last = features.float().reshape(features.shape[0], -1, features.shape[-1]).mean(dim=1)  # (B, C4)
    middle = middle_map.float().flatten(2)  # (B, C3, h*w)
    return torch.cat([last, middle.mean(dim=2), middle.std(dim=2, correction=0), contrast(last_map)], dim=1)


def mean_over_frames(domain: torch.Tensor) -> torch.Tensor:
    """A picture's (B, D) vector as it is; a clip's (B, N, D) frame vectors averaged into one (B, D)."""
    return domain.reshape(domain.shape[0], -1, domain.shape[-1]).mean(dim=1)
