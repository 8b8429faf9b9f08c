"""What aotrain/strategies.py does to a network for DeepSpeed, checked in one CPU process (DeepSpeed
itself needs CUDA: tests/test_gpu_strategies.py runs it)."""
import torch

from aotrain import towers
from aotrain.strategies import vectorise_scalars
from evaluation.models import adapter_for


def _inputs(net):
    g = torch.Generator().manual_seed(0)
    return torch.rand(4, 3, 32, 32, generator=g), torch.randint(1, 100, (4, net.context_length), generator=g)


def test_vectorised_scalars_keep_the_loss_and_its_gradients():
    """DeepSpeed cannot broadcast 0-d parameters: logit_scale (and SigLIP's logit_bias) get shape [1],
    and the SigLIP loss, its value and every gradient, stays what it was."""
    from open_clip.loss import SigLipLoss

    torch.manual_seed(0)
    net = towers.build_clip("toy-vit-micro", init_logit_bias=-10.0)
    images, tokens = _inputs(net)

    def loss_and_grads():
        net.zero_grad()
        out = net(images, tokens)
        loss = SigLipLoss()(out["image_features"], out["text_features"], out["logit_scale"], out["logit_bias"])
        loss.backward()
        return loss.detach(), {name: p.grad.clone().reshape(-1) for name, p in net.named_parameters()}

    loss, grads = loss_and_grads()
    assert vectorise_scalars(net) == ["logit_scale", "logit_bias"]
    assert net.logit_scale.shape == (1,) and net.logit_bias.shape == (1,)
    assert "logit_scale" in dict(net.named_parameters())  # same names: checkpoints keep their keys
    loss_again, grads_again = loss_and_grads()
    torch.testing.assert_close(loss_again, loss, rtol=0, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_again[name], grad, rtol=0, atol=0, msg=name)


def test_evaluation_through_forward_gives_the_encoders_features():
    """Under ZeRO-3 evaluation encodes through the CLIP's forward (its hooks gather parameters there):
    the same unit features and text classifiers as encode_image/encode_text."""
    torch.manual_seed(0)
    net = towers.build_clip("toy-vit-micro").eval()
    images, _ = _inputs(net)
    tokenizer = towers.tokenizer("toy-vit-micro")
    direct, forward = (adapter_for(net, "clip", tokenizer, "cpu", through_forward=flag) for flag in (False, True))
    torch.testing.assert_close(forward.features(images), direct.features(images), rtol=0, atol=1e-6)
    names, templates = ["red circle", "blue square"], ["a photo of a {}."]
    torch.testing.assert_close(forward.classifier(names, templates), direct.classifier(names, templates), rtol=0, atol=1e-6)
