"""tiffin.pytorch: every save format round trip, weights_only handling, signatures, devices.

The framework contract every framework keeps is tests/test_frameworks.py's; what is PyTorch's
own is here. Running a module (device, precision, inference mode, out-of-memory splitting,
warm-up) is tests/test_pytorch_runtime.py's.
"""

from __future__ import annotations

import io
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import tiffin
from tiffin.exceptions import CorruptEntry, DeviceUnavailable, InvalidArgument
from tiffin.store import models


class Tied(torch.nn.Module):
    """Tied weights, a persistent and a non-persistent buffer, and a method of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = torch.nn.Linear(4, 3, bias=False)
        self.decode = torch.nn.Linear(3, 4, bias=False)
        self.decode.weight = self.encode.weight  # tied: one tensor, two names
        self.register_buffer("scale", torch.tensor(2.0))
        self.register_buffer("offset", torch.full((3,), 0.5), persistent=False)
        self.frozen = torch.nn.Parameter(torch.ones(3), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x) * self.scale + self.offset * self.frozen

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)

    def round_trip(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(self.encode(x), self.decode.weight.t())


class Scriptable(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))

    @torch.jit.export
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def _tied() -> Tied:
    torch.manual_seed(0)
    return Tied().eval()


X = torch.arange(20, dtype=torch.float32).reshape(5, 4) / 10


def test_state_dict_format_keeps_weights_out_of_the_pickle_and_reads_them_weights_only() -> None:
    net = _tied()
    model = tiffin.pytorch.save_model("tied", net)
    options = model.info.options
    assert options["format"] == "state_dict"
    assert model.info.context["framework_versions"]["torch"] == torch.__version__
    assert model.info.signatures == {"forward": {"batchable": False, "batch_dim": 0}}

    # the weights file is a plain state dict: torch's safe loader reads it as is
    weights_file = Path(model.path_of(options["weights"]))
    state = torch.load(weights_file, weights_only=True)
    assert set(state) == set(net.state_dict())
    # the architecture pickle names the weights instead of holding them
    big = torch.nn.Linear(512, 512)
    big_model = tiffin.pytorch.save_model("big", big)
    architecture = Path(big_model.path_of(big_model.info.options["file"])).stat().st_size
    weights = Path(big_model.path_of(big_model.info.options["weights"])).stat().st_size
    assert weights > 512 * 512 * 4 and architecture < 20_000

    loaded = tiffin.pytorch.load_model("tied")
    assert type(loaded) is Tied and not loaded.training
    torch.testing.assert_close(loaded(X), net(X))
    assert loaded.decode.weight is loaded.encode.weight  # still tied
    torch.testing.assert_close(loaded.offset, net.offset)  # the non-persistent buffer too
    assert loaded.frozen.requires_grad is False and loaded.encode.weight.requires_grad is True


def test_a_whole_pickled_module_is_what_current_torch_refuses_by_default(tmp_path: Path) -> None:
    """Why the default format splits weights from the architecture: torch.load's default
    (weights_only=True since torch 2.6) refuses a module pickled whole."""
    torch.save(_tied(), tmp_path / "whole.pt")
    with pytest.raises(Exception, match="weights_only"):
        torch.load(tmp_path / "whole.pt")
    tiffin.pytorch.save_model("tied", _tied())
    torch.testing.assert_close(tiffin.pytorch.load_model("tied")(X), _tied()(X))


def test_changed_weights_are_refused_before_they_are_read() -> None:
    model = tiffin.pytorch.save_model("tied", _tied())
    weights_file = Path(model.path_of(model.info.options["weights"]))
    state = torch.load(weights_file, weights_only=True)
    state["scale"] = torch.tensor(100.0)
    torch.save(state, weights_file)  # valid weights, different bytes
    with pytest.raises(CorruptEntry, match="SHA-256"):
        tiffin.pytorch.load_model("tied")


def test_signatures_all_declares_forward_and_the_modules_own_methods() -> None:
    model = tiffin.pytorch.save_model("tied", _tied(), signatures="all")
    assert sorted(model.info.signatures) == ["embed", "forward", "round_trip"]
    runner = model.to_runner()
    runner.init_local()
    try:
        np.testing.assert_allclose(runner.embed.run(X.numpy()), _tied().embed(X).detach().numpy())
        np.testing.assert_allclose(runner.round_trip.run(X.numpy()),
                                   _tied().round_trip(X).detach().numpy(), rtol=1e-5)
    finally:
        runner.destroy()
    with pytest.raises(InvalidArgument, match="'all'"):
        tiffin.pytorch.save_model("tied", _tied(), signatures="every")


def test_predict_is_the_module_itself_where_it_has_no_predict() -> None:
    model = tiffin.pytorch.save_model("tied", _tied(), signatures={"predict": {"batchable": True}})
    runner = model.to_runner()
    runner.init_local()
    try:
        np.testing.assert_allclose(runner.predict.run(X.numpy()), _tied()(X).detach().numpy())
    finally:
        runner.destroy()


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_format_round_trip_with_an_exported_method() -> None:
    torch.manual_seed(0)
    net = Scriptable().eval()
    model = tiffin.pytorch.save_model(
        "scripted", net, format="torchscript", signatures={"forward": {}, "logits": {}}
    )
    assert model.info.options["format"] == "torchscript"
    loaded = tiffin.pytorch.load_model("scripted")
    assert isinstance(loaded, torch.jit.ScriptModule)
    torch.testing.assert_close(loaded(X), net(X))
    torch.testing.assert_close(loaded.logits(X), net.logits(X))
    # a method the scripted module does not keep is refused when saving
    with pytest.raises(InvalidArgument, match="round_trip"):
        tiffin.pytorch.save_model("tied", _tied(), format="torchscript",
                                  signatures={"round_trip": {}})
    assert [m.tag.name for m in tiffin.models.list()] == ["scripted"]


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_a_module_torchscript_cannot_compile_is_refused_with_a_way_out() -> None:
    class Dynamic(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(x.numpy() * 2)  # numpy: nothing torchscript compiles

    with pytest.raises(InvalidArgument, match=r"torch\.jit\.trace.*format='export'"):
        tiffin.pytorch.save_model("dynamic", Dynamic(), format="torchscript")
    assert tiffin.models.list() == []


def test_export_format_runs_any_batch_size_and_keeps_forward_only() -> None:
    net = _tied()
    with pytest.raises(InvalidArgument, match="example_inputs"):
        tiffin.pytorch.save_model("exported", net, format="export")
    with pytest.raises(InvalidArgument, match="forward only"):
        tiffin.pytorch.save_model("exported", net, format="export", example_inputs=X[:1],
                                  signatures={"embed": {}})
    model = tiffin.pytorch.save_model("exported", net, format="export", example_inputs=X[:1],
                                      signatures={"forward": {"batchable": True}})
    assert model.info.options["format"] == "export"
    loaded = tiffin.pytorch.load_model("exported")
    for rows in (1, 3, 5):  # traced with one row, runs any number
        torch.testing.assert_close(loaded(X[:rows]), net(X[:rows]))


def test_external_modules_travel_by_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "tiffin_test_user_nets.py"
    source.write_text(textwrap.dedent("""
        import torch

        class Doubler(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = torch.nn.Linear(2, 2)

            def forward(self, x):
                return self.linear(x) * 2
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import tiffin_test_user_nets as user_nets

    net = user_nets.Doubler().eval()
    tiffin.pytorch.save_model("by_value", net, external_modules=[user_nets])
    tiffin.pytorch.save_model("by_reference", net)
    # the serving machine does not have the module
    monkeypatch.delitem(sys.modules, "tiffin_test_user_nets")
    source.unlink()
    x = torch.ones(1, 2)
    torch.testing.assert_close(tiffin.pytorch.load_model("by_value")(x), net(x))
    with pytest.raises(ModuleNotFoundError, match="tiffin_test_user_nets"):
        tiffin.pytorch.load_model("by_reference")
    with pytest.raises(InvalidArgument, match="external_modules"):
        tiffin.pytorch.save_model("bad", net, external_modules=["tiffin_test_user_nets"])


def test_example_inputs_are_saved_as_tensors_and_read_weights_only() -> None:
    example = np.ones((2, 4), dtype=np.float32)
    model = tiffin.pytorch.save_model("tied", _tied(), example_inputs=example)
    data = Path(model.path_of(model.info.options["example"])).read_bytes()
    (restored,) = torch.load(io.BytesIO(data), weights_only=True)
    torch.testing.assert_close(restored, torch.ones(2, 4))
    with pytest.raises(InvalidArgument, match="example_inputs"):
        tiffin.pytorch.save_model("tied", _tied(), example_inputs="not a tensor")


def test_bad_arguments_leave_nothing_in_the_store() -> None:
    with pytest.raises(InvalidArgument, match=r"not a torch\.nn\.Module"):
        tiffin.pytorch.save_model("net", lambda x: x)
    with pytest.raises(InvalidArgument, match="format must be one of"):
        tiffin.pytorch.save_model("net", _tied(), format="onnx")
    with pytest.raises(InvalidArgument, match="'embedd'"):
        tiffin.pytorch.save_model("net", _tied(), signatures={"embedd": {}})
    assert models.scan() == ([], [])


def test_an_unknown_format_in_model_yaml_is_refused() -> None:
    model = tiffin.pytorch.save_model("tied", _tied())
    yaml_file = Path(model.path_of("model.yaml"))
    data = yaml.safe_load(yaml_file.read_text())
    data["options"]["format"] = "onnx"
    yaml_file.write_text(yaml.safe_dump(data))
    with pytest.raises(CorruptEntry, match="unknown format 'onnx'"):
        tiffin.pytorch.load_model("tied")


def test_load_model_places_and_casts_the_module() -> None:
    tiffin.pytorch.save_model("tied", _tied())
    half = tiffin.pytorch.load_model("tied", precision="bfloat16")
    assert half.encode.weight.dtype == torch.bfloat16
    assert half.encode.weight.device.type == "cpu"
    auto = tiffin.pytorch.load_model("tied", device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert auto.encode.weight.device.type == expected
    with pytest.raises(DeviceUnavailable, match=r"'cuda:63'.*torch sees") as info:
        tiffin.pytorch.load_model("tied", device="cuda:63")
    assert "\n" not in str(info.value)
    with pytest.raises(InvalidArgument, match="device must be"):
        tiffin.pytorch.load_model("tied", device="gpu")
    with pytest.raises(InvalidArgument, match="precision must be"):
        tiffin.pytorch.load_model("tied", precision="int8")
