"""`pip install -e .` makes the library importable from any folder."""
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_installs_and_imports_from_another_folder(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=300)
    python = venv / "bin" / "python"
    # the dependencies (and pip, setuptools) come from this environment, as
    # --system-site-packages gives them where torch is installed system-wide: nothing is
    # downloaded
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.run([str(python), "-c", where], capture_output=True, text=True,
                               check=True).stdout.strip())
    (site / "this_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps",
                              "--no-build-isolation", "-e", str(ROOT)],
                             capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "my_project"
    elsewhere.mkdir()
    code = ("import lst, models, level_set_traversal; "
            "print(lst.__file__); print(models.WEIGHTS_DIR); "
            "print(lst.LSTSettings().iters)")
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lst_file, weights, iters = proc.stdout.split()
    assert Path(lst_file).is_relative_to(ROOT) and Path(weights) == ROOT / "models" / "weights"
    assert iters == "100"
