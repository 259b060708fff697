"""Model registry: every model builds, runs, and names real probe, output and pre-activation layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.models import MODELS, build_model, model_options

FLAT_MODELS = ["lenet_300_100", "fcn"]
IMAGE_MODELS = [name for name in MODELS if name not in FLAT_MODELS]

# (model, input_shape): each model on CIFAR-like and digits-like images; the flat models also
# on MNIST-like images and both mnist1d layouts.
CASES = (
    [(name, (3, 32, 32)) for name in MODELS]
    + [(name, (1, 8, 8)) for name in MODELS]
    + [(name, (1, 28, 28)) for name in ["lenet_300_100", "lenet5", "conv2", "fcn"]]
    + [(name, shape) for name in FLAT_MODELS for shape in [(1, 40), (40,)]]
)


def _capture(model: nn.Module, paths: set[str], x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    modules = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    handles = [modules[p].register_forward_hook(lambda _m, _i, out, p=p: outputs.__setitem__(p, out)) for p in paths]
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return logits, outputs


@pytest.mark.parametrize(("name", "input_shape"), CASES)
def test_forward_shape_and_probe_layers(name: str, input_shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(name, input_shape=input_shape, num_classes=7).eval()
    paths = set(dict(model.named_modules()))
    assert set(model.probe_layers) <= paths
    assert set(model.preactivation_layers) | set(model.preactivation_layers.values()) <= paths
    assert model.output_layer in paths and model.probe_layers[-1] == model.output_layer
    assert set(model.preactivation_layers) == set(model.probe_layers[:-1])
    modules = dict(model.named_modules())
    output_layer = modules[model.output_layer]
    assert isinstance(output_layer, nn.Linear) and output_layer.out_features == 7
    # probes are ReLU modules, never in-place: in-place would overwrite the captured pre-activation
    assert all(isinstance(modules[p], nn.ReLU) for p in model.preactivation_layers)
    assert not any(isinstance(m, nn.ReLU) and m.inplace for m in modules.values())

    x = torch.randn(3, *input_shape)
    with torch.no_grad():
        logits, outputs = _capture(model, set(model.probe_layers) | set(model.preactivation_layers.values()), x)
    assert logits.shape == (3, 7)
    torch.testing.assert_close(outputs[model.output_layer], logits)
    for probe, pre in model.preactivation_layers.items():
        # the probe is the ReLU of its pre-activation: the analysis relies on both paths
        torch.testing.assert_close(outputs[probe], torch.relu(outputs[pre]))


def test_lenet_300_100_layout() -> None:
    model = build_model("lenet_300_100", input_shape=(1, 28, 28), num_classes=10)
    assert model.probe_layers == ("fc1_relu", "fc2_relu", "fc3")
    assert model.preactivation_layers == {"fc1_relu": "fc1", "fc2_relu": "fc2"}
    assert [p.shape for p in model.parameters()] == [(300, 784), (300,), (100, 300), (100,), (10, 100), (10,)]


def test_fcn_options() -> None:
    model = build_model("fcn", input_shape=(40,), num_classes=10, options={"widths": [32, 16], "batchnorm": False})
    assert model.probe_layers == ("fc1_relu", "fc2_relu", "fc3")
    assert model.preactivation_layers == {"fc1_relu": "fc1", "fc2_relu": "fc2"}
    default = build_model("fcn", input_shape=(40,), num_classes=10)
    assert default.probe_layers == ("fc1_relu", "fc2_relu", "fc3_relu", "fc4")
    assert default.preactivation_layers["fc1_relu"] == "fc1_bn"
    assert model_options("fcn") == {"widths": (1024, 1024, 1024), "batchnorm": True}


@pytest.mark.parametrize("options", [{"widths": []}, {"widths": [0]}, {"widths": "64"}, {"batchnorm": 1}])
def test_fcn_bad_option_values(options: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        build_model("fcn", input_shape=(40,), num_classes=10, options=options)


def test_resnet_shortcuts() -> None:
    a = build_model("resnet20", input_shape=(3, 32, 32), num_classes=10)
    b = build_model("resnet20", input_shape=(3, 32, 32), num_classes=10, options={"shortcut": "B"})
    n_params = [sum(p.numel() for p in m.parameters()) for m in (a, b)]
    assert n_params[0] == 269_722 and n_params[1] > n_params[0]
    assert "layer2.0.relu2" in a.probe_layers and a.preactivation_layers["layer2.0.relu2"] == "layer2.0.add"
    with pytest.raises(ValueError, match=r"'shortcut' must be one of \['A', 'B'\]; got 'C'"):
        build_model("resnet20", input_shape=(3, 32, 32), num_classes=10, options={"shortcut": "C"})


def test_unknown_model() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'lenet'; expected one of \[.*'lenet_300_100'"):
        build_model("lenet", input_shape=(1, 28, 28), num_classes=10)


def test_unknown_option_names_option_and_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown option 'width' for model 'fcn'; expected one of "
                                         r"\['batchnorm', 'widths'\]"):
        build_model("fcn", input_shape=(40,), num_classes=10, options={"width": 3})
    with pytest.raises(ValueError, match=r"unknown option 'widths' for model 'lenet5'; it takes no options"):
        build_model("lenet5", input_shape=(1, 28, 28), num_classes=10, options={"widths": 3})


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_models_refuse_1d_inputs(name: str) -> None:
    with pytest.raises(ValueError, match=r"needs image input_shape .*\(1, 40\)"):
        build_model(name, input_shape=(1, 40), num_classes=10)


@pytest.mark.parametrize(("input_shape", "num_classes"), [((), 10), ((0, 8, 8), 10), ((1, 2, 3, 4), 10),
                                                         ((1, 8, 8), 0), ((1, 8, 8), True)])
def test_bad_shapes(input_shape: tuple[int, ...], num_classes: int) -> None:
    with pytest.raises(ValueError, match="input_shape|num_classes"):
        build_model("lenet_300_100", input_shape=input_shape, num_classes=num_classes)


def test_initialisation_follows_the_global_seed() -> None:
    def weights() -> list[torch.Tensor]:
        torch.manual_seed(3)
        return list(build_model("conv2", input_shape=(1, 8, 8), num_classes=10).state_dict().values())

    for a, b in zip(weights(), weights()):
        torch.testing.assert_close(a, b)


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        MODELS["mine"] = lambda *a: nn.Linear(1, 1)  # type: ignore[index]
