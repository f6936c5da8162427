import pytest
import torch

from edgeprune.errors import UnknownNameError
from edgeprune.zoo import build_zoo, zoo_names


@pytest.mark.parametrize("name", zoo_names())
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32), (1, 8)])
def test_every_zoo_model_runs_on_its_input_shape(name, channels, size):
    model = build_zoo(name, in_channels=channels, image_size=size, num_classes=7).eval()
    assert model(torch.zeros(2, channels, size, size)).shape == (2, 7)


def test_reference_shapes_match_the_papers():
    lenet = build_zoo("lenet300")
    assert [m.weight.shape[0] for m in lenet if isinstance(m, torch.nn.Linear)] == [300, 100, 10]
    fc5 = build_zoo("fc5")
    assert [tuple(m.weight.shape) for m in fc5 if isinstance(m, torch.nn.Linear)] == [
        (300, 784), (200, 300), (100, 200), (50, 100), (10, 50)]
    r8 = build_zoo("resnet8")
    convs = [m for m in r8.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 7 and [c.out_channels for c in convs][-1] == 128
    r20 = build_zoo("resnet20")
    assert sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in r20.modules()) == 19


def test_widths_are_arguments_so_compacted_models_rebuild():
    m = build_zoo("lenet300", hidden=[120, 40])
    assert [mod.out_features for mod in m if isinstance(mod, torch.nn.Linear)] == [120, 40, 10]
    v = build_zoo("vgg_small", widths=[8, 16, 24])
    assert v.fc.in_features == 24


def test_unknown_architecture_lists_the_zoo():
    with pytest.raises(UnknownNameError, match="zoo:lenet300"):
        build_zoo("alexnet")
