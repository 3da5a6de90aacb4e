"""User errors through the Python API: each is a ``ValueError`` naming the problem.

(The command-line side, exit code 2 with one line, is in ``test_cli.py``.)
"""
import pytest
import torch

from avalanche_av.experiment import RunConfig, check_device, check_output_dir
from avalanche_av.training import load_checkpoint, make_plugins, save_checkpoint

from .conftest import make_strategy


def _strategy(plugins=(), **model_overrides):
    from avalanche_av.evaluation import av_evaluator
    from avalanche_av.models import create_model
    from avalanche_av.training import AVPretraining, default_optimizer

    model = create_model("tiny", **model_overrides)
    return AVPretraining(model=model, optimizer=default_optimizer(model), train_mb_size=4, train_epochs=1,
                         device="cpu", plugins=list(plugins), evaluator=av_evaluator(loggers=[]))


def test_checkpoint_of_another_model_is_a_value_error(tmp_path):
    save_checkpoint(tmp_path / "ck.pt", make_strategy())
    other = _strategy(embed_dim=64)
    with pytest.raises(ValueError, match=r"ck.pt does not fit the model .*size mismatch") as info:
        load_checkpoint(tmp_path / "ck.pt", other)
    assert "\n" not in str(info.value)


class _RunsCodeWhenUnpickled:
    """A pickle payload that would create a folder if its code ran on load."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


def test_pickled_code_is_refused_by_every_loader_and_never_runs(tmp_path):
    """Run checkpoints, ``--resume`` state and model weights all load with weights_only=True:
    a file carrying pickled code is refused with a ValueError naming the file, and the code
    does not run."""
    from avalanche_av.models import create_model
    from avalanche_av.models.weights import load_weights
    from avalanche_av.training.checkpoint import read_checkpoint

    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "avalanche-av-checkpoint/1", "model": _RunsCodeWhenUnpickled(str(marker))}, evil)
    for load in (lambda: read_checkpoint(evil), lambda: load_checkpoint(evil, make_strategy()),
                 lambda: load_weights(create_model("tiny"), evil)):
        with pytest.raises(ValueError, match=r"evil\.pt.*weights_only"):
            load()
    assert not marker.exists()


def test_plugin_state_that_does_not_fit_is_a_value_error(tmp_path):
    er = make_strategy(make_plugins("er", mem_size=4, batch_size=4), mb=4)
    save_checkpoint(tmp_path / "ck.pt", er)
    state = torch.load(tmp_path / "ck.pt", weights_only=True)
    (key,) = state["plugins"]
    state["plugins"][key] = {"something": "else"}  # e.g. another method's state under the same key
    torch.save(state, tmp_path / "ck.pt")
    fresh = make_strategy(make_plugins("er", mem_size=4, batch_size=4), mb=4)
    with pytest.raises(ValueError, match=rf"saved state of plugin {key} does not fit it .*KeyError"):
        load_checkpoint(tmp_path / "ck.pt", fresh)


def test_official_weight_shapes_for_every_preset():
    from avalanche_av.models import get_config, list_presets
    from avalanche_av.models.weights import cav_mae_state_dict_shapes

    for name in list_presets():
        c = get_config(name)
        shapes = cav_mae_state_dict_shapes(c)
        # Hand-checked entries: the conv patch embeddings and the fixed positional tables.
        assert shapes["module.patch_embed_a.proj.weight"] == (c.embed_dim, 1, c.patch_size, c.patch_size)
        assert shapes["module.patch_embed_v.proj.weight"] == (c.embed_dim, 3, c.patch_size, c.patch_size)
        assert shapes["module.pos_embed_v"] == (1, c.grid * c.grid, c.embed_dim)
        assert shapes["module.pos_embed_a"] == (1, c.num_audio_patches, c.embed_dim)


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "meta"])
def test_unknown_devices(device):
    with pytest.raises(ValueError, match="--device"):
        check_device(device)


def test_available_devices_pass():
    check_device(None)
    check_device("cpu")
    if torch.cuda.is_available():
        check_device("cuda")
    else:
        with pytest.raises(ValueError, match="no CUDA GPU"):
            check_device("cuda:0")


def test_output_dir_checks(tmp_path):
    check_output_dir(tmp_path / "new" / "deeper", "--out")  # creatable
    f = tmp_path / "f"
    f.write_text("")
    with pytest.raises(ValueError, match="is an existing file"):
        check_output_dir(f, "--out")
    with pytest.raises(ValueError, match="is a file, so the folder cannot be created"):
        check_output_dir(f / "a" / "b", "--out")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(strategy="stella", strategy_options={"rho": 0.3}), "unknown option 'rho'"),
        (dict(strategy="finetune", strategy_options={"alpha": 1.0}), "unknown option 'alpha'"),
        (dict(strategy="er", mem_size=0), "mem_size"),
        (dict(num_workers=-1), "--num-workers"),
        (dict(ks=(0,)), "ks must be positive"),
        (dict(amp="fp8"), "--amp"),
    ],
)
def test_run_config_validate(kwargs, match, tmp_path):
    cfg = RunConfig(out_dir=str(tmp_path / "o"), **kwargs)
    with pytest.raises(ValueError, match=match):
        cfg.validate()
