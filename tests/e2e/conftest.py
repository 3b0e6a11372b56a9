import pytest

from podkit.train.loop import train
from tests.conftest import tiny_config


@pytest.fixture(scope="session")
def tiny_run(synth_set, tmp_path_factory):
    """A 2-iteration tiny Faster R-CNN run folder on the shared synthetic set."""
    out = tmp_path_factory.mktemp("tiny-run") / "run"
    train(tiny_config(synth_set, max_iter=2), out)
    return out
