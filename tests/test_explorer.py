"""The explorer pages of print_tables --html: what they hold, and, in a real browser (Debian's
chromium driven by Selenium), that the slider, the straight line and the triangle show the
recorded values."""
import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import level_set_traversal as cli
import print_tables
from lst.explorer import explorer_groups, page_data
from lst.hull import triangle_grid
from lst.plots import walk_frames
from lst.tables import load_run

FAST = ["--iters", "12", "--log_step", "2", "--batch_size", "8", "--quiet"]
PATH = ["--get_images", "--get_confs_over_path"]
S, T = 1, 0  # a pair whose adaptive walk stops before its last recording


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two models on the same pairs with recorded paths (one walk schedule each, so their
    recordings differ), and one run on other pairs."""
    out = tmp_path_factory.mktemp("explore")
    classes = ["--target_classes", "0", "1", "2"]
    assert cli.main(["smallcnn-normal", "shapes", "--examples", *classes, "--out_dir", str(out),
                     *FAST, *PATH]) == 0
    assert cli.main(["smallcnn-linf", "shapes", "--examples", *classes, "--out_dir", str(out),
                     "--schedule", "adaptive", *FAST, "--iters", "60", *PATH]) == 0
    assert cli.main(["smallcnn-normal", "shapes", "--examples", "--target_classes", "0", "1", "3",
                     "--out_dir", str(out), *FAST, *PATH]) == 0
    assert print_tables.main([str(out), "--html"]) == 0
    return out


def runs_in(folder: Path):
    return [load_run(p) for p in sorted(folder.glob("*_examples_dict.pkl"))]


def page_json(page: Path) -> dict:
    text = page.read_text(encoding="utf-8")
    found = re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S)
    return json.loads(found.group(1).replace("<\\/", "</"))


def decode(uri: str) -> np.ndarray:
    """A data: URI -> (H,W,C) uint8."""
    raw = base64.b64decode(uri.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


def test_one_page_per_group_of_runs_on_the_same_pairs(folder, capsys):
    groups = explorer_groups(runs_in(folder))
    assert sorted(len(g) for g in groups) == [1, 2]
    pages = sorted(folder.glob("explore_*.html"))
    assert len(pages) == 2
    both = next(p for p in pages if len(page_json(p)["runs"]) == 2)
    assert {r["model"] for r in page_json(both)["runs"]} == {"smallcnn-normal", "smallcnn-linf"}
    report = (folder / "report.html").read_text(encoding="utf-8")
    assert all(f'href="{p.name}"' in report for p in pages)
    text = both.read_text(encoding="utf-8")  # self-contained: nothing fetched from elsewhere
    assert not re.search(r'(src|href)="(?!data:|#)', text) and "<link" not in text
    assert "url(http" not in text and "@import" not in text


def test_the_page_holds_the_recorded_path_of_every_pair(folder):
    run = next(r for r in runs_in(folder) if r.args["schedule"] == "adaptive")
    data = page_data([run])
    res, pair = run.results, data["runs"][0]["pairs"][S][T]
    frames = walk_frames(res, S, T)
    assert pair["iters"] == res["log_iters"][frames].tolist()
    assert len(frames) < len(res["log_iters"])  # the walk stopped before its last recording
    strip = decode(pair["strip"])  # the frames side by side, exactly as recorded (PNG)
    recorded = res["images_over_path"][S, T, frames].transpose(0, 2, 3, 1)
    assert np.array_equal(strip, np.concatenate(list(recorded), axis=1))
    np.testing.assert_allclose(pair["confs"], res["confs_over_path"][S, T, frames], atol=1e-5)
    np.testing.assert_allclose(pair["straight"], res["straight"][S, T], atol=1e-5)
    assert data["runs"][0]["pairs"][1][1] is None
    m = [tuple(p) for p in res["hull_pairs"]].index((1, 2))
    np.testing.assert_allclose(data["runs"][0]["triangles"][0][m], res["hull_confs"][0, m],
                               atol=1e-5)


def test_a_folder_without_paths_gets_a_note_and_no_page(tmp_path, capsys):
    assert cli.main(["smallcnn-normal", "shapes", "--examples", "--target_classes", "0", "1", "2",
                     "--out_dir", str(tmp_path), *FAST]) == 0
    capsys.readouterr()
    assert print_tables.main([str(tmp_path), "--html"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "explorer" in line]
    assert len(notes) == 1 and notes[0].startswith("no explorer: ")
    assert not list(tmp_path.glob("explore_*"))
    assert notes[0] in (tmp_path / "report.html").read_text(encoding="utf-8")


# ---- in a real browser -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium through Selenium; skipped (one line) where it is not installed."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="no browser: selenium missing")
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no browser: Debian's chromium and chromium-driver are not installed "
                    "(.ci/run installs them where it runs as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--force-device-scale-factor=1", "--window-size=1400,1800"):
        options.add_argument(flag)
    session = webdriver.Chrome(options=options, service=Service(driver))
    yield session
    session.quit()


def shown(browser, css: str) -> np.ndarray:
    """What the browser draws for one element: (H,W,3) uint8."""
    element = browser.find_element("css selector", css)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    return np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB"))


def sampled(picture: np.ndarray, zoom: int) -> np.ndarray:
    """The centre of every zoom x zoom block: the image before the browser enlarged it."""
    return picture[zoom // 2::zoom, zoom // 2::zoom].astype(int)


def number_after(prefix: str, text: str) -> float:
    return float(re.search(re.escape(prefix) + r"(-?[0-9.]+)", text).group(1))


def marker(browser, css: str) -> tuple[float, float]:
    """A chart marker's place read back in data units (the chart's data-* mapping)."""
    return browser.execute_script("""
        const m = document.querySelector(arguments[0]), d = m.ownerSVGElement.dataset;
        return [(m.cx.baseVal.value - d.left) / d.width * d.xmax,
                1 - (m.cy.baseVal.value - d.top) / d.height];""", css)


def check_walk(browser, data: dict, runs: list, s: int, t: int, zoom: int) -> None:
    """The slider's position against the recorded values: the iterate each run shows (its
    pixels), the readout, the confidence markers and the straight line at the same progress."""
    step = int(browser.find_element("id", "step").get_attribute("value"))
    iters = sorted({run.results["log_iters"][i] for run in runs
                    for i in walk_frames(run.results, s, t)})
    assert f"iteration {iters[step]} ({step + 1} of {len(iters)}" in \
        browser.find_element("id", "step-label").text
    for r, run in enumerate(runs):
        res = run.results
        frames = walk_frames(res, s, t)
        k = max(j for j, i in enumerate(frames) if res["log_iters"][i] <= iters[step])
        expected = res["images_over_path"][s, t, frames[k]].transpose(1, 2, 0).astype(int)
        assert np.array_equal(sampled(shown(browser, f"#frame-{r}"), zoom), expected)
        source, target = res["confs_over_path"][s, t, frames[k]]
        left = res["distance_over_path"][s, t, frames[k]]
        read = browser.find_element("id", f"read-{r}").text
        assert read.startswith(f"iteration {res['log_iters'][frames[k]]}")
        assert abs(number_after("distance left ", read) - left) <= 6e-4  # shown to 3 decimals
        np.testing.assert_allclose(marker(browser, f"#chart-{r} .marker-source"),
                                   (res["log_iters"][frames[k]], source), atol=1e-4)
        np.testing.assert_allclose(marker(browser, f"#chart-{r} .marker-target"),
                                   (res["log_iters"][frames[k]], target), atol=1e-4)
        f = 1 - float(left)
        line = (1 - f) * res["images"][s] + f * res["images"][t]  # x_s + f (x_t - x_s)
        line = np.rint(line * 255).transpose(1, 2, 0)
        assert np.abs(sampled(shown(browser, f"#line-{r}"), zoom) - line).max() <= 3
        curve = np.interp(f, np.linspace(0, 1, 21), res["straight"][s, t])
        np.testing.assert_allclose(marker(browser, f"#fchart-{r} .marker-line"), (f, curve),
                                   atol=1e-4)


def walk_page(browser, folder: Path, script_change=None):
    """Open the page of the two runs on the same pairs (optionally with its script changed);
    returns its data, runs (in page order) and the images' zoom."""
    page = next(p for p in sorted(folder.glob("explore_*.html")) if len(page_json(p)["runs"]) == 2)
    if script_change:
        text = page.read_text(encoding="utf-8")
        assert script_change[0] in text
        page = folder / "broken" / page.name
        page.parent.mkdir(exist_ok=True)
        page.write_text(text.replace(*script_change), encoding="utf-8")
    browser.get(page.as_uri())
    data = page_json(page)
    by_file = {r.path.name: r for r in runs_in(folder)}
    runs = [by_file[r["file"]] for r in data["runs"]]
    return data, runs, data["width"] // runs[0].results["images"].shape[-1]


def walk_the_slider(browser, data, runs, zoom):
    from selenium.webdriver.common.keys import Keys

    browser.find_element("css selector", f'#grid td[data-s="{S}"][data-t="{T}"]').click()
    slider = browser.find_element("id", "step")
    check_walk(browser, data, runs, S, T, zoom)
    for key in ("ARROW_RIGHT", "ARROW_RIGHT", "ARROW_RIGHT", "END"):
        slider.send_keys(getattr(Keys, key))
        check_walk(browser, data, runs, S, T, zoom)


def test_the_slider_shows_the_recorded_iterate_confidence_and_line(browser, folder):
    data, runs, zoom = walk_page(browser, folder)
    assert zoom > 1  # small images are enlarged: each pixel a zoom x zoom block
    walk_the_slider(browser, data, runs, zoom)
    browser.save_screenshot(str(folder / "explorer.png"))
    assert browser.get_log("browser") == []  # no script error


def test_the_check_fails_on_a_slider_wired_to_the_wrong_step(browser, folder):
    wrong = ("if (i <= it) k = j;", "if (i < it) k = j;")  # one recorded step behind
    data, runs, zoom = walk_page(browser, folder, wrong)
    with pytest.raises(AssertionError):
        walk_the_slider(browser, data, runs, zoom)


def test_a_triangle_point_shows_its_confidence_and_blend(browser, folder):
    data, runs, zoom = walk_page(browser, folder)
    browser.find_element("css selector", '#grid td[data-s="0"][data-t="2"]').click()
    grid = triangle_grid().numpy()
    for point in (0, 27, 65):  # the source, an inner point, the vertex of blind spot 2
        for r, run in enumerate(runs):
            browser.find_element("css selector", f'#tri-{r} circle[data-p="{point}"]').click()
            res = run.results
            m = [tuple(p) for p in res["hull_pairs"]].index((1, 2))
            read = browser.find_element("id", f"triread-{r}").text
            assert abs(number_after("p(source) = ", read)
                       - res["hull_confs"][0, m, point]) <= 6e-4
            w = grid[point]
            spots = np.rint(res["blind_spots"][0, [1, 2]] * 255)
            blend = w[0] * np.rint(res["images"][0] * 255) + w[1] * spots[0] + w[2] * spots[1]
            assert np.abs(sampled(shown(browser, f"#triblend-{r}"), zoom)
                          - blend.transpose(1, 2, 0)).max() <= 4


# ---- full_eval runs ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def full_folder(tmp_path_factory):
    """A full_eval with its blind spots and recorded paths, and the same without the paths."""
    out = tmp_path_factory.mktemp("explore_full")
    for extra in (PATH, []):
        assert cli.main(["smallcnn-normal", "shapes", "--full_eval", "--num_samples", "5",
                         "--rounds", "3", "--get_final_imgs", "--out_dir", str(out), *FAST,
                         *extra]) == 0
    assert print_tables.main([str(out), "--html"]) == 0
    return out


def full_runs(folder: Path, page: dict):
    by_file = {p.name: load_run(p) for p in folder.glob("*_fulleval_dict.pkl")}
    return [by_file[r["file"]] for r in page["runs"]]


def test_a_full_eval_page_has_its_sources_targets_and_lines(full_folder):
    pages = list(full_folder.glob("explore_*.html"))
    assert len(pages) == 1  # both runs walk the same pairs: one page, side by side
    data = page_json(pages[0])
    runs = full_runs(full_folder, data)
    res = runs[0].results
    sources = np.stack([decode(uri) for uri in data["images"]]).transpose(0, 3, 1, 2)
    assert np.array_equal(sources, res["source_images"])
    for n, r in np.ndindex(*res["target_indices"].shape):  # a target is another row's source
        pair = data["runs"][0]["pairs"][n][r]
        if pair is not None:
            assert res["source_indices"][pair["target"]] == res["target_indices"][n, r]
    lines = load_run(runs[0].path.with_name(runs[0].stem + "_all_confs.pkl")).results
    lines = lines["straight_confs"]
    assert lines.shape == (*res["target_indices"].shape, 21)  # the line starts at the source:
    np.testing.assert_allclose(lines[..., 0], res["init_confs"], atol=1e-5)
    assert sorted(r["recorded"] for r in data["runs"]) == [False, True]  # in file-name order
    unrecorded = next(r for r in data["runs"] if not r["recorded"])
    ends = unrecorded["pairs"][0][0]  # without --get_images: the source and the blind spot
    assert len(ends["iters"]) == 2 and ends["distance"][0] == 1.0


def test_a_full_eval_walks_in_the_browser(browser, full_folder):
    from selenium.webdriver.common.keys import Keys

    page = next(full_folder.glob("explore_*.html"))
    browser.get(page.as_uri())
    data = page_json(page)
    runs = full_runs(full_folder, data)
    zoom = data["width"] // runs[0].results["source_images"].shape[-1]
    browser.find_element("css selector", '#grid td[data-s="1"][data-t="2"]').click()
    browser.find_element("id", "step").send_keys(Keys.END)
    for r, run in enumerate(runs):
        res = run.results
        last = (res["images_over_path"][1, 2, walk_frames(res, 1, 2)[-1]]
                if data["runs"][r]["recorded"] else res["final_images"][1, 2])
        assert np.array_equal(sampled(shown(browser, f"#frame-{r}"), zoom),
                              last.transpose(1, 2, 0).astype(int))
        pair = data["runs"][r]["pairs"][1][2]
        f = 1 - pair["distance"][-1]
        line = (1 - f) * res["source_images"][1] + f * res["source_images"][pair["target"]]
        assert np.abs(sampled(shown(browser, f"#line-{r}"), zoom)
                      - line.transpose(1, 2, 0)).max() <= 3
        np.testing.assert_allclose(marker(browser, f"#fchart-{r} .marker-line"),
                                   (f, np.interp(f, np.linspace(0, 1, 21), pair["straight"])),
                                   atol=1e-4)
    assert browser.get_log("browser") == []
