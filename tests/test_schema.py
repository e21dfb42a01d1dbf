"""Results files of every version read as the current one (lst.schema)."""
import pytest

import lst
from lst.results import ResultsError, load_results, save_results
from lst.schema import SCHEMA_VERSION, upgrade
from lst.shapes import ShapesDataset
from lst.tables import load_run, run_arguments
from models import load_model


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    out = tmp_path_factory.mktemp("schema")
    model, _ = load_model("smallcnn-normal", "shapes")
    settings = lst.LSTSettings(iters=2, pthresh=0.3)
    key = lst.run_key("examples", "smallcnn-normal", "shapes", settings, classes=[0, 1, 2])
    store = lst.RunStore.for_run(out, key)
    with store.open():
        lst.run_examples(model, ShapesDataset("test", seed=0), [0, 1, 2], settings, out_dir=out,
                         dataset_name="shapes", store=store)
    return store.path("examples_dict")


def test_a_file_of_now_carries_the_current_version(examples):
    assert load_results(examples)["args"]["schema_version"] == SCHEMA_VERSION


def test_a_file_of_before_run_keys_and_target_files_reads_as_one_of_now(examples, tmp_path):
    payload = load_results(examples)
    flags = {"model": "smallcnn-normal", "dataset": "shapes", "examples": True, "pthresh": 0.3,
             "iters": 2, "adv_step_size": 0.004, "target_classes": [0, 1, 2], "out_dir": "x"}
    results = {k: v for k, v in payload["results"].items() if k != "target_files"}
    old = tmp_path / examples.name
    save_results(old, flags, results)  # version 0: flags only, no run key, no target_files
    run = load_run(old)
    assert run.args["schema_version"] == SCHEMA_VERSION
    assert run.results["target_files"] == payload["results"]["target_files"]
    arguments = run_arguments(run.args)
    assert arguments["pthresh"] == 0.3 and arguments["iters"] == 2
    assert arguments["adv_step_size"] is None  # the flags had no --adv_pert: the term was off
    assert arguments["classes"] == [0, 1, 2] and arguments["step_size"] == 0.05  # a default


def test_a_file_of_a_newer_tool_is_refused(examples):
    payload = load_results(examples)
    payload["args"]["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ResultsError, match="newer than this tool's"):
        upgrade(payload, "examples", "that file")
