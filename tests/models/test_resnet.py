import pytest
import torch

from podkit.models.resnet import FrozenBatchNorm2d, ResNet, load_resnet_weights


@pytest.mark.parametrize("depth,expansion", [(18, 1), (50, 4)])
def test_resnet_stage_shapes_and_strides(depth, expansion):
    net = ResNet(depth, width=0.25, norm="bn").eval()
    outs = net(torch.rand(1, 3, 64, 96))
    assert net.strides == [4, 8, 16, 32]
    for out, stride, channels in zip(outs, net.strides, net.out_channels, strict=True):
        assert out.shape == (1, channels, 64 // stride, 96 // stride)
    assert net.out_channels[-1] == 16 * 8 * expansion


def test_frozen_bn_equals_batchnorm_in_eval():
    bn = torch.nn.BatchNorm2d(5).eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.uniform_(-1, 1)
    frozen = FrozenBatchNorm2d(5)
    frozen.load_state_dict(bn.state_dict())
    x = torch.randn(2, 5, 4, 4)
    assert torch.allclose(frozen(x), bn(x), atol=1e-6)


def test_freeze_at_stops_gradients():
    net = ResNet(18, width=0.25, norm="frozen", freeze_at=2)
    assert not any(p.requires_grad for p in net.conv1.parameters())
    assert not any(p.requires_grad for p in net.layer1.parameters())
    assert all(p.requires_grad for p in net.layer2.parameters())


def test_load_torchvision_layout_weights_round_trip(tmp_path):
    """A state dict saved from a BatchNorm ResNet (torchvision's keys, with fc.* and
    num_batches_tracked) loads into the frozen-BN trunk and gives the same features."""
    source = ResNet(50, width=0.25, norm="bn").eval()
    for m in source.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    state = source.state_dict()
    state["fc.weight"] = torch.zeros(10, source.out_channels[-1])
    state["fc.bias"] = torch.zeros(10)
    path = tmp_path / "r50.pth"
    torch.save(state, path)
    target = ResNet(50, width=0.25, norm="frozen")
    unused = load_resnet_weights(target, path)
    assert unused == ["fc.bias", "fc.weight"]
    x = torch.rand(1, 3, 64, 64)
    for a, b in zip(source(x), target(x), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_load_weights_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_resnet_weights(ResNet(18, 0.25), tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth"):
        load_resnet_weights(ResNet(18, 0.25), bad)
    wrong = tmp_path / "r18.pth"
    torch.save(ResNet(18, 0.5).state_dict(), wrong)
    with pytest.raises(ValueError, match="r18.pth.*shape"):
        load_resnet_weights(ResNet(18, 0.25), wrong)
