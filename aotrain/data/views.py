"""Two augmented views of one image: what the self-supervised arm (`supervision=self`) trains on.

    views = view_pair("toy-vit-fast", crop_scale=[0.4, 1.0], flip=0.5)
    a, b = views(pil_image)        # two [3, H, W] tensors, independent draws of the augmentation

Each view is the model's own train transform (towers.image_transforms: the one every arm trains
with, compared by the parity check) applied after a view augmentation (a random resized crop and a
horizontal flip), so the base transform is literally the other arms' and the augmentation is the
self arm's own parity item (aotrain/parity.py). The draws come from torch's default generator, which
the stream seeds per sample (aotrain/data/shard_stream.py): same seed, same views.

Colour distortion (SimCLR's: jitter of strength `colour_jitter` with probability 0.8, greyscale
with probability `greyscale`) is on by default although colour is a toy attribute: without it two
views of an image agree on their colour histogram and background tint, and NT-Xent learns little
else. Measured on the default toy world at 300 steps without it: linear-probe object top-1 0.02 on
unseen pairs and 0.16 on seen ones (chance 0.10), the colour shortcut SimCLR's paper reports. The
self arm is read by its object probe only, so colour invariance costs it nothing there. Blur is
left out: at 32 px it would erase the dotted, striped and checkered patterns. A crop down to 40% of
the area keeps most of a toy shape (it spans 50-80% of the image); a flip keeps every shape what it
is (an arrow pointing left is still an arrow).
"""
from __future__ import annotations

from typing import Sequence

from torchvision import transforms

from aotrain import towers


class ViewPair:
    """image -> (view a, view b): two independent draws of `augment`, each followed by `base`."""

    def __init__(self, base, augment):
        self.base = base  # the model's train transform, as every arm's
        self.augment = augment  # PIL -> PIL, this arm's own

    def __call__(self, image):
        return self.base(self.augment(image)), self.base(self.augment(image))  # [3,H,W] each

    def __repr__(self) -> str:
        return f"ViewPair(augment={self.augment!r}, base=the model's train transform)"


def view_augmentation(model_name: str, crop_scale: Sequence[float] = (0.4, 1.0),
                      crop_ratio: Sequence[float] = (0.75, 4 / 3), flip: float = 0.5,
                      colour_jitter: float = 0.0, greyscale: float = 0.0):
    """The PIL -> PIL augmentation each view draws: a random resized crop to the model's image size
    (area share `crop_scale`, aspect `crop_ratio`), a horizontal flip with probability `flip`, then
    SimCLR's colour distortion: with probability 0.8 brightness, contrast and saturation jitter of
    0.8 x `colour_jitter` and hue jitter of 0.2 x `colour_jitter` (0: none), and greyscale with
    probability `greyscale`."""
    size = towers.model_config(model_name)["vision_cfg"]["image_size"]
    if not (0 < crop_scale[0] <= crop_scale[1] <= 1):
        raise ValueError(f"views.crop_scale must be 0 < low <= high <= 1, got {list(crop_scale)}")
    if not 0 <= flip <= 1:
        raise ValueError(f"views.flip is a probability in [0, 1], got {flip}")
    if not 0 <= colour_jitter <= 2.5:  # hue jitter 0.2 x strength must stay within torchvision's 0.5
        raise ValueError(f"views.colour_jitter is a strength in [0, 2.5] (SimCLR uses 0.5-1), got {colour_jitter}")
    if not 0 <= greyscale <= 1:
        raise ValueError(f"views.greyscale is a probability in [0, 1], got {greyscale}")
    steps = [
        transforms.RandomResizedCrop(size, scale=tuple(crop_scale), ratio=tuple(crop_ratio),
                                     interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(flip),
    ]
    if colour_jitter:
        s = colour_jitter
        steps.append(transforms.RandomApply([transforms.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8))
    if greyscale:
        steps.append(transforms.RandomGrayscale(greyscale))
    return transforms.Compose(steps)


def view_pair(model_name: str, **views) -> ViewPair:
    """The views of `data.views` (keyword arguments of view_augmentation) for `model_name`."""
    train, _ = towers.image_transforms(model_name)
    return ViewPair(train, view_augmentation(model_name, **views))
