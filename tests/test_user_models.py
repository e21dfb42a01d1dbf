"""A user's model and images from the command line (models.files, the `folder` dataset) and
from Python: the same images and the same model give the same results through every path, and
every bad input is one line, exit 2 and an unchanged output folder.

The images are the `shapes` test split written as PNGs (exact: shapes are 8-bit) and, where the
shared CIFAR-10 images are present, CIFAR-10 test images; the models are the shipped ones,
exported by the tests (TorchScript, torch.export) or rebuilt by a factory module they write.
"""
import itertools
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import print_tables
import lst
from lst.results import load_results
from lst.shapes import SHAPE_CLASSES, ShapesDataset
from models import load_model
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
SHARED_CIFAR = ROOT.parent / "shared" / "data" / "cifar10" / "test"
FAST = ["--iters", "6", "--log_step", "3", "--batch_size", "8"]
EXAMPLES = ["--examples", "--target_classes", "0", "1", "2", *FAST]
FULL_EVAL = ["--full_eval", "--num_samples", "6", "--rounds", "2", "--get_final_imgs", *FAST]
_names = itertools.count()

FACTORY_MODULE = '''
import torch
from torch import nn
from models.architectures import SmallCNN


def bare_smallcnn():
    """SmallCNN without its normalisation inside: it expects (x - 0.5) / 0.25."""
    net = SmallCNN()
    return nn.Sequential(net.features, net.classifier)


def own_weights_smallcnn():
    """SmallCNN that loads its weights itself, from own.pt beside this file (no --load_model_path)."""
    from pathlib import Path
    net = SmallCNN()
    net.load_state_dict(torch.load(Path(__file__).with_name("own.pt"), weights_only=True))
    return net


def gray_smallcnn():
    """A 1-channel model: the SmallCNN on the gray channel repeated (weights from a state dict)."""
    return GrayInput(SmallCNN())


class GrayInput(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.repeat(1, 3, 1, 1))


def not_a_model():
    return "a string"


def fails():
    raise RuntimeError("no GPU here")
'''


def run(*argv, out_dir, cwd=None):
    """The command line in this process; returns its exit code (cwd: the folder it runs in)."""
    return run_cli(*argv, "--out_dir", out_dir, "--quiet", cwd=cwd).returncode


def results_of(out_dir, kind):
    (path,) = Path(out_dir).glob(f"*_{kind}.pkl")
    return load_results(path)


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory):
    """The shapes test split as DIR/<class>/<index>.png with classes.txt in label order (the
    names sorted would be another order)."""
    root = tmp_path_factory.mktemp("shapes") / "shapes"
    data = ShapesDataset("test")
    for name in SHAPE_CLASSES:
        (root / name).mkdir(parents=True)
    for k, (image, label) in enumerate(zip(data.images, data.targets)):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / SHAPE_CLASSES[label] / f"{k:05d}.png")
    (root / "classes.txt").write_text("\n".join(SHAPE_CLASSES) + "\n")
    return root


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """smallcnn-normal as TorchScript and torch.export files, a factory module (imported from
    the folder the command runs in) and state dicts for its factories."""
    folder = tmp_path_factory.mktemp("models")
    model, _ = load_model("smallcnn-normal", "shapes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model), folder / "smallcnn.pt")
        program = torch.export.export(model, (torch.rand(2, 3, 32, 32),),
                                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
        torch.export.save(program, folder / "smallcnn.pt2")
    module = f"user_nets_{os.getpid()}"
    (folder / f"{module}.py").write_text(FACTORY_MODULE)
    torch.save(nn.Sequential(model.features, model.classifier).state_dict(), folder / "bare.pt")
    torch.save(model.state_dict(), folder / "own.pt")
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}},
               folder / "gray.pt")  # nested under a trainer's key
    return {"dir": folder, "module": module, "torchscript": folder / "smallcnn.pt",
            "exported": folder / "smallcnn.pt2", "bare_weights": folder / "bare.pt",
            "gray_weights": folder / "gray.pt"}


def folder_index_to_shapes_index(root: Path) -> np.ndarray:
    """The shapes index of every image of the folder dataset, in its order."""
    from lst.data import ClassFolder, is_image_file

    samples = ClassFolder(str(root), is_valid_file=is_image_file).samples
    return np.array([int(Path(p).stem) for p, _ in samples])


def assert_same_results(a: dict, b: dict, keys=("init_confs", "final_confs", "l2", "linf", "ssim")):
    for key in keys:
        np.testing.assert_allclose(a[key], b[key], atol=1e-5, rtol=0, err_msg=key)
    np.testing.assert_array_equal(a["kept"], b["kept"])


@pytest.mark.parametrize("kind", ["torchscript", "exported"])
@pytest.mark.kernels
def test_a_models_export_on_a_folder_equals_the_registry_model_on_the_built_in_data(
        shapes_folder, model_files, tmp_path, kind):
    builtin, exported = tmp_path / "builtin", tmp_path / "exported"
    for mode in (EXAMPLES, FULL_EVAL):
        assert run("smallcnn-normal", "shapes", *mode, out_dir=builtin) == 0
        assert run(model_files[kind], "folder", "--data_path", shapes_folder, *mode,
                   out_dir=exported) == 0
    a, b = results_of(builtin, "examples_dict"), results_of(exported, "examples_dict")
    np.testing.assert_array_equal(a["results"]["images"], b["results"]["images"])
    assert_same_results(a["results"], b["results"])
    assert b["args"]["model"] == model_files[kind].stem and b["args"]["dataset"] == "shapes"
    assert b["args"]["model_spec"] == str(model_files[kind])
    assert b["args"]["run_key"]["model_file"] is not None
    a, b = results_of(builtin, "fulleval_dict"), results_of(exported, "fulleval_dict")
    to_shapes = folder_index_to_shapes_index(shapes_folder)
    assert np.array_equal(a["results"]["source_indices"], to_shapes[b["results"]["source_indices"]])
    assert np.array_equal(a["results"]["target_indices"], to_shapes[b["results"]["target_indices"]])
    assert_same_results(a["results"], b["results"])
    np.testing.assert_array_equal(a["results"]["final_images"], b["results"]["final_images"])
    # the registry name runs on the folder too, with the same results
    assert run("smallcnn-normal", "folder", "--data_path", shapes_folder, *EXAMPLES,
               out_dir=tmp_path / "named") == 0
    assert_same_results(results_of(builtin, "examples_dict")["results"],
                        results_of(tmp_path / "named", "examples_dict")["results"])


@pytest.mark.skipif(not SHARED_CIFAR.is_dir(), reason="shared CIFAR-10 images not present")
@pytest.mark.kernels
def test_resnet20_on_cifar10_equals_its_torchscript_export_on_the_images_as_a_folder(tmp_path):
    """The issue's own check: `resnet20-normal cifar10 --cifar_path` against a TorchScript
    export of it on the same images laid out as a folder (the first 20 test images a class)."""
    import shutil

    tree = tmp_path / "cifar" / "test"
    for folder in sorted(SHARED_CIFAR.iterdir()):
        (tree / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:20]:
            shutil.copy(image, tree / folder.name / image.name)
    model, _ = load_model("resnet20-normal", "cifar10")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, torch.rand(2, 3, 32, 32)), tmp_path / "resnet20.pt")
    for mode in (EXAMPLES, FULL_EVAL):
        assert run("resnet20-normal", "cifar10", "--cifar_path", tree.parent, *mode,
                   out_dir=tmp_path / "builtin") == 0
        assert run(tmp_path / "resnet20.pt", "folder", "--data_path", tree, *mode,
                   out_dir=tmp_path / "folder") == 0
    for kind in ("examples_dict", "fulleval_dict"):
        a = results_of(tmp_path / "builtin", kind)["results"]
        b = results_of(tmp_path / "folder", kind)["results"]
        assert_same_results(a, b)
        if kind == "fulleval_dict":  # both list the images class by class, by file name
            assert np.array_equal(a["source_indices"], b["source_indices"])
            assert np.array_equal(a["target_indices"], b["target_indices"])


@pytest.mark.kernels
def test_a_model_without_its_normalisation_and_mean_std_equals_the_model_with_it(
        shapes_folder, model_files, tmp_path):
    """A factory with a state dict (--load_model_path), normalised by --mean/--std, against the
    TorchScript file of the model that normalises inside."""
    factory = f"{model_files['module']}:bare_smallcnn"
    for mode in (EXAMPLES, FULL_EVAL):
        assert run(model_files["torchscript"], "folder", "--data_path", shapes_folder, *mode,
                   out_dir=tmp_path / "inside") == 0
        assert run(factory, "folder", "--data_path", shapes_folder, "--load_model_path",
                   model_files["bare_weights"], "--mean", "0.5", "0.5", "0.5", "--std", "0.25",
                   "0.25", "0.25", *mode, out_dir=tmp_path / "wrapped", cwd=model_files["dir"]) == 0
    for kind in ("examples_dict", "fulleval_dict"):
        a, b = results_of(tmp_path / "inside", kind), results_of(tmp_path / "wrapped", kind)
        assert_same_results(a["results"], b["results"])
        key = b["args"]["run_key"]
        assert key["model"] == "bare_smallcnn" and key["weights_file"] is not None
        assert key["preprocessing"] == {"mean": [0.5] * 3, "std": [0.25] * 3}
    # other statistics are another run (another file), and give other results
    assert run(factory, "folder", "--data_path", shapes_folder, "--load_model_path",
               model_files["bare_weights"], "--mean", "0.4", "0.5", "0.5", "--std", "0.25", "0.25",
               "0.25", *EXAMPLES, out_dir=tmp_path / "wrapped", cwd=model_files["dir"]) == 0
    assert len(list((tmp_path / "wrapped").glob("*_examples_dict.pkl"))) == 2


@pytest.fixture(scope="module")
def gray_folder(tmp_path_factory):
    """The first 300 shapes test images in grayscale, 1-channel PNGs, class names sorted."""
    root = tmp_path_factory.mktemp("gray") / "gray"
    data = ShapesDataset("test", size=300)
    for k, (image, label) in enumerate(zip(data.images, data.targets)):
        (root / f"{label}_{SHAPE_CLASSES[label]}").mkdir(parents=True, exist_ok=True)
        gray = Image.fromarray(image.permute(1, 2, 0).numpy()).convert("L")
        gray.save(root / f"{label}_{SHAPE_CLASSES[label]}" / f"{k:05d}.png")
    return root


def test_a_grayscale_folder_with_a_one_channel_model_runs_both_modes(gray_folder, model_files,
                                                                      tmp_path):
    factory = f"{model_files['module']}:gray_smallcnn"
    for mode in (EXAMPLES, FULL_EVAL):
        assert run(factory, "folder", "--data_path", gray_folder, "--load_model_path",
                   model_files["gray_weights"], *mode, out_dir=tmp_path, cwd=model_files["dir"]) == 0
    examples = results_of(tmp_path, "examples_dict")["results"]
    assert examples["images"].shape == (3, 1, 32, 32)
    assert examples["blind_spots"].shape == (3, 3, 1, 32, 32)
    assert np.isfinite(examples["final_confs"]).all() and examples["kept"].all()
    assert Image.open(tmp_path / examples["target_files"][0]).mode == "L"
    assert list(tmp_path.glob("*_grid.png")) and list(tmp_path.glob("*_triangles_source0.png"))
    full = results_of(tmp_path, "fulleval_dict")["results"]
    assert full["final_images"].shape == (6, 2, 1, 32, 32)
    assert np.isfinite(full["hull_stats"]["mean"]).all()
    assert print_tables.main([str(tmp_path), "--html"]) == 0
    report = (tmp_path / "report.html").read_text()
    assert examples["target_files"][0] in report and "gray_smallcnn" in report


def test_files_and_callables_judge_blind_spots_too(shapes_folder, model_files, tmp_path):
    import shutil

    copy = shutil.copy(model_files["exported"], tmp_path / "exported_copy.pt2")
    judges = [str(copy), f"{model_files['module']}:bare_smallcnn"]
    code = run(model_files["torchscript"], "folder", "--data_path", shapes_folder, *EXAMPLES,
               "--transfer_models", *judges, out_dir=tmp_path / "out", cwd=model_files["dir"])
    assert code == 0
    payload = results_of(tmp_path / "out", "examples_dict")
    r = payload["results"]
    assert r["transfer_models"] == ["exported_copy", "bare_smallcnn"]
    off = ~np.eye(3, dtype=bool)
    # the exported copy of the model agrees with it; the bare factory has random weights
    np.testing.assert_allclose(r["transfer_source_conf"][..., 1][off],
                               r["transfer_source_conf"][..., 0][off], atol=1e-5)
    assert not np.allclose(r["transfer_source_conf"][..., 2][off], r["transfer_source_conf"][..., 0][off])
    assert payload["args"]["run_key"]["transfer_model_files"][0] is not None


def test_run_examples_and_full_eval_from_python_write_what_the_command_line_writes(
        shapes_folder, tmp_path, capsys):
    """lst.run_examples / lst.run_full_eval on any nn.Module and dataset, through a RunStore."""
    model, config = load_model("smallcnn-normal", "shapes")
    dataset = lst.data.load_dataset("folder", root=shapes_folder, config=config)
    settings = lst.LSTSettings(iters=6, log_step=3)
    key = lst.run_key("examples", "mynet", "shapes", settings, classes=[0, 1, 2])
    store = lst.RunStore.for_run(tmp_path / "py", key)
    with store.open():
        ours = lst.run_examples(model, dataset, [0, 1, 2], settings, out_dir=tmp_path / "py",
                                dataset_name="shapes", batch_size=8, store=store)
    key = lst.run_key("full_eval", "mynet", "shapes", settings, num_samples=6, rounds=2,
                      get_final_imgs=True)
    store = lst.RunStore.for_run(tmp_path / "py", key)
    with store.open():
        lst.run_full_eval(model, dataset, settings, num_samples=6, rounds=2, batch_size=8,
                          get_final_imgs=True, store=store)
    assert not list((tmp_path / "py").glob("*_parts"))  # finished: no partial state left
    for mode in (EXAMPLES, FULL_EVAL):
        assert run("smallcnn-normal", "shapes", *mode, out_dir=tmp_path / "cli") == 0
    for kind in ("examples_dict", "fulleval_dict"):
        a, b = results_of(tmp_path / "cli", kind), results_of(tmp_path / "py", kind)
        assert_same_results(a["results"], b["results"])
        assert b["args"]["model"] == "mynet" and b["args"]["run_key"]["weights"]
    assert ours["target_files"] == [f"shapes_target_{c}.png" for c in range(3)]
    capsys.readouterr()
    assert print_tables.main([str(tmp_path / "py")]) == 0
    assert "mynet" in capsys.readouterr().out


def test_a_factory_that_loads_its_own_weights_is_the_model_it_loads(model_files, tmp_path):
    """package.module:callable without --load_model_path: the factory's own weights are the run's
    (their fingerprint in the run key), and it gives the registry model's results."""
    from lst.identity import weights_fingerprint

    factory = f"{model_files['module']}:own_weights_smallcnn"
    assert run(factory, "shapes", *EXAMPLES, out_dir=tmp_path / "own", cwd=model_files["dir"]) == 0
    assert run("smallcnn-normal", "shapes", *EXAMPLES, out_dir=tmp_path / "registry") == 0
    own, registry = (results_of(tmp_path / d, "examples_dict") for d in ("own", "registry"))
    assert_same_results(own["results"], registry["results"])
    key = own["args"]["run_key"]
    assert key["model"] == "own_weights_smallcnn" and key["weights_file"] is None
    assert key["weights"] == weights_fingerprint(load_model("smallcnn-normal", "shapes")[0])
    assert key["model_file"] is not None  # the factory's source decides the run too


def test_any_dataset_of_pairs_gives_the_results_of_the_same_images(tmp_path):
    """From Python: a dataset without `targets` (labels read item by item)."""
    model, _ = load_model("smallcnn-normal", "shapes")
    shapes = ShapesDataset("test", size=60)

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return len(shapes)

        def __getitem__(self, i):
            return shapes[i]

    settings = lst.LSTSettings(iters=4)
    results, _ = lst.run_full_eval(model, Pairs(), settings, num_samples=5, rounds=2)
    again, _ = lst.run_full_eval(model, shapes, settings, num_samples=5, rounds=2)
    assert np.array_equal(results["source_indices"], again["source_indices"])
    for key in ("final_confs", "l2", "ssim"):  # the same images in the same batches
        np.testing.assert_array_equal(results[key], again[key], err_msg=key)


# -- bad input: one line, exit 2, an unchanged output folder ---------------------------------


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, model_files):
    """Folders and files, each wrong in one way."""
    base = tmp_path_factory.mktemp("bad")

    def images(folder, classes, per_class=2, size=(32, 32), mode="RGB"):
        for c in classes:
            (folder / c).mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                Image.new(mode, size[::-1], (40 * k, 80, 120)).save(folder / c / f"{k}.png")
        return folder

    ten = [f"c{k}" for k in range(10)]
    made = {
        "three_classes": images(base / "three", ["a", "b", "c"]),
        "ten": images(base / "ten", ten),
        "empty_dir": base / "empty",
        "empty_class": images(base / "empty_class", ten),
        "corrupt": images(base / "corrupt", ten),
        "mixed_sizes": images(base / "mixed", ten),
        "unlisted": images(base / "unlisted", ten),
        "not_torchscript": base / "weights_only.pt",
        "state_dict": model_files["bare_weights"],
    }
    made["empty_dir"].mkdir()
    for f in (made["empty_class"] / "c3").iterdir():
        f.unlink()
    (made["corrupt"] / "c4" / "1.png").write_bytes(b"not a png at all")
    images(made["mixed_sizes"], ["c7"], size=(48, 40))
    (made["unlisted"] / "classes.txt").write_text("\n".join(ten[:-1]) + "\n")
    torch.save({"w": torch.zeros(3)}, made["not_torchscript"])
    return made


SHAPES = ["--examples", "--iters", "2"]
BAD = [  # (argv with {name} of bad_inputs / {module}, the message)
    (["{torchscript}", "folder", "--data_path", "{three_classes}"], r"has 3 classes but .*smallcnn.pt has 10 outputs.*classes\.txt"),
    (["smallcnn-normal", "folder", "--data_path", "{three_classes}"], "has 3 classes but smallcnn-normal has 10 outputs"),
    (["{torchscript}", "folder", "--data_path", "{empty_dir}"], "has no class folders"),
    (["{torchscript}", "folder", "--data_path", "{empty_class}"], r"class folder .*c3 holds no images"),
    (["{torchscript}", "folder", "--data_path", "{corrupt}"], r"cannot read image .*c4/1\.png"),
    (["{torchscript}", "folder", "--data_path", "{mixed_sizes}"], r"have 2 sizes .*--image_size"),
    (["{torchscript}", "folder", "--data_path", "{unlisted}"], r"class folder .*c9 is not named in .*classes\.txt"),
    (["nonsense", "shapes"], "unknown model 'nonsense' for shapes.*TorchScript file"),
    (["missing/model.pt", "shapes"], "model file missing/model.pt does not exist"),
    (["{not_torchscript}", "shapes"], "is not a TorchScript file"),
    (["no_such_package_xyz:build", "shapes"], "cannot import no_such_package_xyz"),
    (["{module}:nothing_here", "shapes"], "has no nothing_here"),
    (["{module}:not_a_model", "shapes"], r"not_a_model\(\) returned a str, not a torch.nn.Module"),
    (["{module}:fails", "shapes"], r"fails\(\) failed \(RuntimeError: no GPU here\)"),
    (["{module}:bare_smallcnn", "shapes", "--load_model_path", "{not_torchscript}"], "unexpected key 'w'|missing key '0.0.weight'"),
    (["{module}:gray_smallcnn", "shapes", "--load_model_path", "{state_dict}"], "do not fit .*missing key 'model.features.0.weight'"),
    (["{torchscript}", "folder", "--data_path", "{ten}", "--image_size", "7"], r"fails on a \(2, 3, 7, 7\) batch"),
    (["{torchscript}", "shapes", "--mean", "0.5", "0.5", "--std", "1", "1"], r"3-channel images: --mean and --std need 3 value\(s\) each, got 2 and 2"),
    (["{torchscript}", "shapes", "--mean", "0.5", "--std", "0.25"], "takes 3-channel images: --mean and --std need 3"),
    (["{torchscript}", "shapes", "--mean", "0.5", "0.5", "0.5", "--std", "0.2", "0", "0.2"], "--std must not be 0"),
    (["{torchscript}", "shapes", "--mean", "0.5", "0.5", "0.5"], "--mean and --std go together"),
    (["{torchscript}", "shapes", "--mean", "0.5", "nan", "0.5", "--std", "1", "1", "1"], "must be finite numbers"),
    (["smallcnn-normal", "shapes", "--mean", "0.5", "0.5", "0.5", "--std", "1", "1", "1"], "for a TorchScript file or package.module:callable"),
    (["{torchscript}", "folder", "--data_path", "{ten}", "--target_classes", "c1", "dog", "c2"], "'dog' is not a class of"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a[:2] + a[3:4]) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_and_an_unchanged_folder(bad_inputs, model_files, tmp_path,
                                                              argv, message):
    import re

    names = {**bad_inputs, "torchscript": model_files["torchscript"], "module": model_files["module"]}
    argv = [a.format(**{k: str(v) for k, v in names.items()}) for a in argv]
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("kept")
    proc = run_cli(*argv, *SHAPES, "--out_dir", out, cwd=model_files["dir"])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert re.search(message, lines[0]), lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["earlier.txt"]
