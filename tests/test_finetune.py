"""Fine-tuning a market stage: it learns what the market's people say, from the committed model's own stage."""
import numpy as np
import pytest
import torch

from roomvision.config import CLASSES, DEFAULT_WEIGHTS
from roomvision.learning.finetune import fine_tune_stage, stage_inputs, stage_logits
from roomvision.model import Checkpoint
from tests.conftest import needs_shared


@pytest.fixture(scope="module")
def committed_model():
    return Checkpoint.load(DEFAULT_WEIGHTS).build_model()


def test_a_fine_tuned_stage_learns_a_market_whose_labels_the_model_does_not_share(committed_model):
    """A market that calls bathrooms "Kitchen" and kitchens "Bathroom" (the committed model answers the opposite):
    fine-tuned on 40 photos of each, the stage answers the market on photos it never saw."""
    root = needs_shared("house-rooms")
    files = {room: sorted((root / room).glob("*.jpg"))[:60] for room in ("Bathroom", "Kitchen")}
    market_rooms = [CLASSES.index("Bathroom"), CLASSES.index("Kitchen")]
    says = {"Bathroom": 1, "Kitchen": 0}   # index into market_rooms: swapped
    train = [f for room in files for f in files[room][:40]]
    test = [f for room in files for f in files[room][40:]]
    y_train = np.array([says[f.parent.name] for f in train])
    y_test = np.array([says[f.parent.name] for f in test])
    pre = Checkpoint.load(DEFAULT_WEIGHTS).preprocess
    inputs, mirrored = stage_inputs(committed_model, train, pre)
    test_inputs, none = stage_inputs(committed_model, test, pre, mirror=False)
    assert none is None and inputs.dtype == mirrored.dtype == torch.float16 and inputs.shape == mirrored.shape
    assert not torch.equal(inputs, mirrored)
    stage = fine_tune_stage(committed_model, inputs, mirrored, y_train, market_rooms, seed=0)
    # before: a copy of the model's own stage and room-head rows agrees with the model, i.e. not with the market
    untrained = fine_tune_stage(committed_model, inputs, mirrored, y_train, market_rooms, seed=0, epochs=0)
    assert np.mean(stage_logits(untrained, test_inputs).argmax(1) == y_test) < 0.2
    assert np.mean(stage_logits(stage, test_inputs).argmax(1) == y_test) >= 0.85
    assert not stage.training   # returned ready to serve
