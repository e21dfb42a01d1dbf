"""AutoAttack through models.robustness: a real attack on a shipped model, resumable from its
state file."""
import json

import pytest

from lst.data import DataError
from lst.shapes import ShapesDataset
from models import load_model
from models.robustness import STANDARD, autoattack_accuracy, evenly_spaced, main
from models.train import in_memory


def shapes_attack(count, tmp_path):
    """The shipped normal SmallCNN, `count` shapes test images and labels, a state file path."""
    model = load_model("smallcnn-normal", "shapes")[0]
    pixels, labels = in_memory(ShapesDataset("test", seed=0))
    return model, pixels[:count].float() / 255, labels[:count], tmp_path / "aa.state.json"


def test_autoattack_counts_robust_images_and_resumes(tmp_path):
    model, images, labels, state = shapes_attack(8, tmp_path)
    first = autoattack_accuracy(model, images, labels, attacks=("apgd-ce",), batch_size=8,
                                state_path=state)
    assert first["clean_acc"] == 1.0 and first["robust_acc"] < 0.5  # the normal model breaks
    # a rerun finds the attack done in the state file and reports the same
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    again = autoattack_accuracy(model, images, labels, attacks=("apgd-ce",), batch_size=8,
                                state_path=state)
    assert again["robust_acc"] == first["robust_acc"] and len(calls) < 20


def test_the_command_writes_its_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["smallcnn-normal", "shapes", "--samples", "4", "--attacks", "apgd-ce",
                 "--batch_size", "4", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["images"] == 4 and record["attacks"] == ["apgd-ce"]
    assert "robust accuracy" in capsys.readouterr().out
    # the command's numbers are the attack's on the images it names: 4 evenly spaced test images
    model = load_model("smallcnn-normal", "shapes")[0]
    pixels, labels = in_memory(ShapesDataset("test", seed=0))
    pick = evenly_spaced(len(pixels), 4)
    direct = autoattack_accuracy(model, pixels[pick].float() / 255, labels[pick],
                                 attacks=("apgd-ce",), batch_size=4,
                                 state_path=tmp_path / "direct.state.json")
    assert (record["clean_acc"], record["robust_acc"]) == (direct["clean_acc"],
                                                           direct["robust_acc"])
    assert record["clean_acc"] == 1.0 and record["robust_acc"] < 1.0  # the normal model breaks


def test_a_reduced_run_resumes_the_first_attacks_of_a_standard_one(tmp_path):
    model, images, labels, state = shapes_attack(6, tmp_path)
    first = autoattack_accuracy(model, images, labels, attacks=("apgd-ce",), batch_size=6,
                                state_path=state)
    saved = json.loads(state.read_text())
    assert saved["done"] == ["apgd-ce"] and set(saved["seconds"]) == {"apgd-ce"}
    assert first["version"] == "reduced" and first["attacks"] == ["apgd-ce"]
    # the state of a standard run stopped after APGD-CE (as the first version of this module
    # wrote it: the attack list, no seconds) is what a reduced run to APGD-CE reports, unattacked
    state.write_text(json.dumps({**{k: v for k, v in saved.items() if k != "seconds"},
                                 "attacks": list(STANDARD)}))
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    again = autoattack_accuracy(model, images, labels, attacks=("apgd-ce",), batch_size=6,
                                state_path=state)
    handle.remove()
    assert again["robust_acc"] == first["robust_acc"] and len(calls) == 1  # the clean pass
    # the state of a run whose attacks done are not the first requested ones is refused
    state.write_text(json.dumps({**saved, "done": ["apgd-t"]}))
    with pytest.raises(DataError, match="not the first of"):
        autoattack_accuracy(model, images, labels, attacks=("apgd-ce",), batch_size=6,
                            state_path=state)
    # and so is another evaluation's
    state.write_text(json.dumps({**saved, "eps": 0.1}))
    with pytest.raises(DataError, match="another evaluation"):
        autoattack_accuracy(model, images, labels, attacks=("apgd-ce",), batch_size=6,
                            state_path=state)
