"""AutoAttack through models.robustness: a real attack on a shipped model, resumable from its
state file."""
import json


from lst.shapes import ShapesDataset
from models import load_model
from models.robustness import autoattack_accuracy, main
from models.train import in_memory


def test_autoattack_counts_robust_images_and_resumes(tmp_path):
    model = load_model("smallcnn-normal", "shapes")[0]
    pixels, labels = in_memory(ShapesDataset("test", seed=0))
    images, labels = pixels[:8].float() / 255, labels[:8]
    state = tmp_path / "aa.state.json"
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
    assert 0 <= record["robust_acc"] <= record["clean_acc"] <= 1
    assert "robust accuracy" in capsys.readouterr().out
