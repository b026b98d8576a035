"""Shapes, parameter counts, initialisation and gradient flow of R, T and D."""

from __future__ import annotations

import pytest
import torch

from cocyclereg.config import Config, load_config
from cocyclereg.learning.pipeline import CoCycleNetworks, CoCycleObjective
from cocyclereg.networks import DualHeadUNet, PatchDiscriminator, ResnetGenerator


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_published_sizes_have_the_published_parameter_counts():
    # method.md: R about 0.32 M, each generator about 34 M, each discriminator about 11 M.
    assert _count(DualHeadUNet()) == pytest.approx(0.32e6, rel=0.01)
    assert _count(ResnetGenerator()) == pytest.approx(34e6, rel=0.01)
    assert _count(PatchDiscriminator()) == pytest.approx(11e6, rel=0.01)


@pytest.mark.parametrize("shape", [(16, 16, 16), (32, 48, 16), (16, 32, 64)])
def test_every_multiple_of_16_works(shape):
    torch.manual_seed(0)
    x, y = torch.rand(2, 1, *shape), torch.rand(2, 1, *shape)
    flow_x2y, flow_y2x = DualHeadUNet(head_init_std=1e-2)(x, y)
    assert flow_x2y.shape == flow_y2x.shape == (2, 3, *shape)
    assert not torch.equal(flow_x2y, flow_y2x)  # two heads
    generator = ResnetGenerator(ngf=4, blocks=2)
    translated = generator(x)
    assert translated.shape == x.shape and translated.abs().max() <= 1
    scores = PatchDiscriminator(ndf=4, layers=2)(x)
    assert scores.shape[:2] == (2, 1) and all(s >= 1 for s in scores.shape[2:])


def test_size_not_a_multiple_of_16_is_refused():
    with pytest.raises(ValueError, match="multiple of 16"):
        DualHeadUNet()(torch.rand(1, 1, 16, 24, 16), torch.rand(1, 1, 16, 24, 16))


def test_heads_start_near_identity():
    torch.manual_seed(0)
    network = DualHeadUNet()
    for head in (network.head_x2y, network.head_y2x):
        assert head.weight.std().item() == pytest.approx(1e-5, rel=0.1)
        assert torch.count_nonzero(head.bias) == 0
    flow, _ = network(torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16))
    assert flow.abs().max() < 1e-2


def test_activation_checkpointing_gives_the_same_values_and_gradients():
    torch.manual_seed(0)
    plain = DualHeadUNet(head_init_std=1e-2)
    checkpointed = DualHeadUNet(head_init_std=1e-2, activation_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    x, y = torch.rand(1, 1, 16, 32, 16), torch.rand(1, 1, 16, 32, 16)
    outputs = [sum(f.square().sum() for f in net(x, y)) for net in (plain, checkpointed)]
    for output in outputs:
        output.backward()
    torch.testing.assert_close(outputs[0], outputs[1])
    for a, b in zip(plain.parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_generator_checkpointing_gives_the_same_values_and_gradients():
    torch.manual_seed(0)
    plain = ResnetGenerator(ngf=4, blocks=2, dropout=0.0)
    checkpointed = ResnetGenerator(ngf=4, blocks=2, dropout=0.0, activation_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    image = torch.rand(1, 1, 16, 32, 16)
    outputs = [net(image).square().sum() for net in (plain, checkpointed)]
    for output in outputs:
        output.backward()
    torch.testing.assert_close(outputs[0], outputs[1])
    for a, b in zip(plain.parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize(
    ("mode", "extra"),
    [
        ("cocycle", []),
        ("sepcycle", []),
        ("vmind", []),
        ("cocycle", ["loss.structure=1.0", "loss.similarity_sigma=1.0"]),
    ],
)
def test_gradients_reach_every_network_of_the_mode(mode, extra):
    config = load_config(preset="cpu-small", overrides=[f"loss.mode={mode}", *extra])
    config.model.generator.ngf, config.model.generator.blocks = 4, 1
    config.model.discriminator.ndf = 4
    torch.manual_seed(0)
    networks = CoCycleNetworks(config)
    modules = {name: getattr(networks, name) for name, _ in networks.named_children()}
    objective = CoCycleObjective(modules, config)
    x, y = torch.rand(1, 1, 16, 16, 32), torch.rand(1, 1, 16, 16, 32)
    translations = objective.translate(x, y) if networks.uses_translation else None
    discriminators = (
        {"discriminate_x": networks.discriminate_x, "discriminate_y": networks.discriminate_y}
        if networks.uses_translation
        else None
    )
    total, terms = objective.generator_loss(x, y, translations, discriminators)
    total.backward()
    expected = (
        {"similarity", "smooth"} if mode == "vmind" else {"similarity", "gan", "cycle", "smooth"}
    )
    assert set(terms) == (expected | {"structure"} if extra else expected)
    for parameter in [*networks.registration.parameters(), *networks.generator_parameters()]:
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    if networks.uses_translation:
        networks.zero_grad()
        objective.discriminator_loss(x, y, objective.translate(x, y)).backward()
        for parameter in networks.discriminator_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0
        # The discriminator loss sees detached translations: no gradient reaches G.
        assert all(p.grad is None for p in networks.generator_parameters())
    else:
        assert not hasattr(networks, "translate_x2y")


def test_default_config_builds_the_published_networks():
    networks = CoCycleNetworks(Config())
    assert _count(networks.registration) == _count(DualHeadUNet())
    assert _count(networks.translate_x2y) == _count(ResnetGenerator())


@pytest.mark.parametrize("stride", [1, 2])
def test_conv3d_on_onednn_matches_pytorchs_own_choice_values_and_gradients(stride):
    # (1, 2, 16, 24, 16): N*C*D*H = 768, a shape PyTorch sends to its reference convolution.
    from cocyclereg.networks.registration import conv3d

    torch.manual_seed(0)
    image = torch.randn(1, 2, 16, 24, 16, requires_grad=True)
    weight = torch.randn(8, 2, 3, 3, 3, requires_grad=True)
    bias = torch.randn(8, requires_grad=True)
    ours = conv3d(image, weight, bias, stride=stride, padding=1)
    (ours * torch.linspace(-1, 1, ours.numel()).view_as(ours)).sum().backward()
    our_gradients = [t.grad.clone() for t in (image, weight, bias)]
    for t in (image, weight, bias):
        t.grad = None
    reference = torch.nn.functional.conv3d(image, weight, bias, stride=stride, padding=1)
    (reference * torch.linspace(-1, 1, ours.numel()).view_as(ours)).sum().backward()
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(our_gradients, (image.grad, weight.grad, bias.grad), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)


def test_the_two_heads_computed_together_equal_each_head_alone():
    torch.manual_seed(1)
    network = DualHeadUNet(head_init_std=1e-1).eval()
    x, y = torch.rand(1, 1, 16, 32, 16), torch.rand(1, 1, 16, 32, 16)
    with torch.no_grad():
        flow_x2y, flow_y2x = network(x, y)
        features = network._backbone(torch.cat([x, y], dim=1))
        torch.testing.assert_close(flow_x2y, network.head_x2y(features), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(flow_y2x, network.head_y2x(features), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backbone_init", ["pytorch", "kaiming"])
def test_backbone_initialisation_sets_the_feature_scale_at_the_heads(backbone_init):
    torch.manual_seed(0)
    network = DualHeadUNet(backbone_init=backbone_init)
    x, y = torch.rand(1, 1, 32, 48, 32), torch.rand(1, 1, 32, 48, 32)
    with torch.no_grad():
        features = network._backbone(torch.cat([x, y], dim=1))
        flow_x2y, flow_y2x = network(x, y)
    scale = float(features.std())
    if backbone_init == "pytorch":  # the published start: features shrink layer by layer
        assert scale < 0.05
    else:  # He initialisation keeps them of order one
        assert 0.2 < scale < 5
    assert flow_x2y.abs().max() < 1e-2 and flow_y2x.abs().max() < 1e-2  # near identity


def test_an_unknown_backbone_initialisation_is_refused():
    with pytest.raises(ValueError, match="backbone_init"):
        DualHeadUNet(backbone_init="xavier")
    with pytest.raises(Exception, match="backbone_init"):
        load_config(preset="cpu-small", overrides=["model.registration.backbone_init=xavier"])


def _stroke_t1(data_dir) -> torch.Tensor:
    """The stroke subject's T1 on a 32x48x32 grid of 5 mm voxels, normalised to [0, 1]."""
    import SimpleITK as sitk

    from cocyclereg.geometry.grid import model_grid
    from cocyclereg.geometry.resample import resample_to_grid

    image = sitk.ReadImage(str(data_dir / "brain-t1t2" / "stroke" / "t1.nii.gz"), sitk.sitkFloat32)
    grid = model_grid(image, spacing=(5.0, 5.0, 5.0), size=(32, 48, 32))
    array = torch.from_numpy(sitk.GetArrayFromImage(resample_to_grid(image, grid, "linear")))
    return (array / array.max())[None, None]


def test_mind_input_sees_structure_not_contrast(data_dir):
    """With MIND-SSC input, R's fields do not change when one image's contrast is inverted and
    rescaled (as between a T1 and a T2), but do when its anatomy moves; with image input they
    change with the contrast too."""
    t1 = _stroke_t1(data_dir)
    other_contrast = 1.0 - 0.6 * t1  # inverted and rescaled: same structure, new intensities
    moved = torch.roll(t1, shifts=2, dims=-1)
    for input_features in ("mind", "images"):
        torch.manual_seed(0)
        network = DualHeadUNet(
            head_init_std=1e-2, backbone_init="kaiming", input_features=input_features
        )
        with torch.no_grad():
            reference = torch.cat(network(t1, t1))
            contrast = torch.cat(network(other_contrast, t1))
            anatomy = torch.cat(network(moved, t1))
        scale = reference.abs().mean()
        contrast_change = (contrast - reference).abs().mean() / scale
        anatomy_change = (anatomy - reference).abs().mean() / scale
        if input_features == "mind":
            assert contrast_change < 1e-4
            assert anatomy_change > 0.05
        else:
            assert contrast_change > 0.05


def test_mind_input_takes_24_channels_and_passes_gradients_to_the_images():
    torch.manual_seed(0)
    network = DualHeadUNet(input_features="mind", head_init_std=1e-2)
    assert network.encoder[0][0].in_channels == 24
    x = torch.rand(1, 1, 16, 16, 16, requires_grad=True)
    flow_x2y, flow_y2x = network(x, torch.rand(1, 1, 16, 16, 16))
    (flow_x2y.square().sum() + flow_y2x.square().sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # the cycle terms train T through R
    with pytest.raises(ValueError, match="input_features"):
        DualHeadUNet(input_features="gradients")
