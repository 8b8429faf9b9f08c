"""Model factory: our toy configs and open_clip's standard ones build from scratch, offline."""
import pytest
import torch

from aotrain import towers


def test_toy_model_encodes_images_and_text_to_one_space():
    model = towers.build_clip("toy-vit-tiny")
    tokens = towers.tokenizer("toy-vit-tiny")(["a red circle", "an orange star"])  # [2, 32]
    assert tokens.shape == (2, 32)
    image_feats = model.encode_image(torch.zeros(2, 3, 32, 32))
    text_feats = model.encode_text(tokens)
    assert image_feats.shape == text_feats.shape == (2, 128)


def test_standard_vit_b32_is_usable_for_real_data():
    train_tf, eval_tf = towers.image_transforms("ViT-B-32")
    assert "224" in repr(eval_tf)
    model = towers.build_clip("ViT-B-32")
    assert 140e6 < sum(p.numel() for p in model.parameters()) < 160e6


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="toy-vit-tiny"):
        towers.model_config("ViT-Q-99")
