"""The two modes of the tool (docs/design.md, "Modes"): all-pairs `examples` and the
`full_eval` over many sources.

Both take a model on [0,1] images and a dataset of ((C,H,W) in [0,1], label), run LST in batches
and return results as plain dicts of numpy arrays, ready for `lst.results.save_results`. A
full_eval keeps its partial state in a `RunStore` so that it resumes.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from itertools import combinations
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .batching import chunks
from .confidence import in_eval_mode, model_device
from .data import dataset_labels, read_image, stack_items
from .distributed import Rank, barrier, broadcast
from .hull import (SEGMENT_POINTS, kept_stats, limbs_and_chords, segment_confidences,
                   segment_stats, source_hull_confidences, table2_stats, triangle_grid)
from .layers import resolve_layers, uncompiled
from .metrics import image_distances
from .progress import progress_bar
from .restarts import RESTART_FIELDS, restart_geometry
from .results import atomic_write
from .identity import file_digest, loaded_key, provenance, results_args, run_key as make_run_key
from .runstore import ResumeError, RunStore
from .sampling import (MIN_CONFIDENCE, PROTOCOLS, assign_targets, derangement_targets,
                       every_pair_targets, example_image_names, select_sources, select_targets)
from .transfer import judge_pairs
from .traversal import LSTSettings, level_set_traversal

log = logging.getLogger(__name__)


def traverse_in_batches(model: nn.Module, sources: torch.Tensor, labels: torch.Tensor,
                        targets: torch.Tensor, target_labels: torch.Tensor,
                        sample_ids: Sequence[int], settings: LSTSettings, batch_size: int,
                        desc: str = "LST", progress: bool = True,
                        restarts: int = 1) -> dict[str, np.ndarray]:
    """LST over N pairs in batches; returns the LSTResult fields (numpy) plus the distances.

    With restarts K > 1 every pair is walked K times (restart r from its own noise, the K walks
    of a pair in one batch of at most batch_size walks, pushed apart by settings.diversity):
    the LSTResult fields are those of restart 0, and restart_final_images (N,K,C,H,W) and
    restart_{field} (N,K) for the fields of `lst.restarts.RESTART_FIELDS` hold all K.
    """
    parts = []
    device = model_device(model)
    sample_ids = np.asarray(sample_ids)
    with progress_bar(list(chunks(len(sources), max(1, batch_size // restarts))), desc=desc,
                      leave=False, disable=not progress) as batches:
        for part in batches:
            def walks(t):  # each pair K times in a row
                return t[part].repeat_interleave(restarts, dim=0)

            res = level_set_traversal(
                model, walks(sources), walks(labels), walks(targets), settings,
                target_labels=walks(target_labels),
                sample_ids=np.repeat(sample_ids[part], restarts).tolist(),
                restarts=list(range(restarts)) * len(sample_ids[part]) if restarts > 1 else None,
                groups=torch.arange(len(sample_ids[part])).repeat_interleave(restarts))
            out = res.numpy()
            out.update(image_distances(res.final_images.to(device), walks(targets).to(device)))
            if restarts > 1:
                out = _split_restarts(out, restarts)
            parts.append(out)
    return {k: (None if parts[0][k] is None else
                parts[0][k] if k == "log_iters" else np.concatenate([p[k] for p in parts]))
            for k in parts[0]}


def _split_restarts(out: dict, restarts: int) -> dict:
    """One batch's walks (pair-major, K per pair) as restart 0's fields plus the restart_*
    arrays (P,K,...) of `traverse_in_batches`."""
    def per_pair(value: np.ndarray) -> np.ndarray:
        return value.reshape(-1, restarts, *value.shape[1:])

    main = {k: (v if v is None or k == "log_iters" else per_pair(v)[:, 0]) for k, v in out.items()}
    main["restart_final_images"] = per_pair(out["final_images"])
    for name in RESTART_FIELDS:
        main[f"restart_{name}"] = per_pair(out[name])
    return main


def example_targets(model: nn.Module, dataset: Dataset, classes: Sequence[int], out_dir: Path,
                    dataset_name: str, min_confidence: float = MIN_CONFIDENCE
                    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """One image per class (docs/design.md, "Modes"), saved as
    {out_dir}/{dataset_name}_target_{class}.png and reused: the first image of the class that
    the model classifies correctly with confidence > min_confidence (`select_targets`).

    Returns the images (K,C,H,W) in [0,1], their classes (K,) and the PNGs' file names. A saved
    PNG is 8-bit (grayscale for 1-channel images): images that were not 8-bit (resized crops)
    are quantised to 1/255 on the first save, and every later run uses the quantised image.
    """
    channels = dataset[0][0].shape[0]
    names = example_image_names(dataset_name, classes)
    images = [None] * len(classes)
    missing = []
    for k, name in enumerate(names):
        png = out_dir / name
        if png.is_file():
            pixels = np.array(read_image(png, channels))
            images[k] = torch.from_numpy(pixels.reshape(*pixels.shape[:2], channels)).permute(2, 0, 1)
        else:
            missing.append(k)
    if missing:
        found = select_targets(model, dataset, [classes[k] for k in missing],
                               min_confidence=min_confidence)
        loaded, _ = stack_items(dataset, found)
        for k, img in zip(missing, loaded):
            pixels = (img * 255).round().clamp(0, 255).to(torch.uint8)
            hwc = pixels.permute(1, 2, 0).numpy()
            picture = Image.fromarray(hwc[..., 0] if channels == 1 else hwc)
            atomic_write(out_dir / names[k], lambda f: picture.save(f, format="PNG"))
            images[k] = pixels
    return torch.stack(images).float() / 255, torch.tensor(list(classes)), names


def example_image_digests(out_dir: str | Path, dataset_name: str, classes: Sequence[int]
                          ) -> list[str | None]:
    """The content hash of each saved example image (None where there is none yet): the run
    key's "example_images" of an examples run."""
    paths = [Path(out_dir) / name for name in example_image_names(dataset_name, classes)]
    return [file_digest(p) if p.is_file() else None for p in paths]


@in_eval_mode
def run_examples(model: nn.Module, dataset: Dataset, classes: Sequence[int], settings: LSTSettings,
                 *, out_dir: str | Path, dataset_name: str, batch_size: int = 64,
                 hull_chunk: int = 512, transfer_models: Mapping[str, nn.Module] | None = None,
                 store: RunStore | None = None, run_key: dict | None = None,
                 flags: dict | None = None, restarts: int = 1,
                 min_confidence: float = MIN_CONFIDENCE) -> dict:
    """All-pairs LST between one image per class and everything the figures need.

    model: on [0,1] images (N,C,H,W) -> logits, on its device; dataset: items ((C,H,W) float in
    [0,1], int label); classes: the K >= 3 classes, one image each (`example_targets`, saved in
    out_dir as {dataset_name}_target_{class}.png and reused; a new one is classified correctly
    with confidence > min_confidence). With a `store`
    (`RunStore.for_run` of an "examples" key, opened), the results file is written there
    ({stem}_examples_dict.pkl, args from `lst.identity.results_args` with `flags`), the same
    file the command line writes, under `run_key` (default: the store's key), completed with
    the loaded weights and the example images (`lst.identity.loaded_key`).

    Returns a dict (numpy arrays, K = len(classes)): images (K,C,H,W), labels (K,),
    target_files (the K example images' file names),
    blind_spots (K,K,C,H,W) [source s, target t], the diagonal holding the originals;
    init_confs (K,), final_confs / kept / l2 / linf / ssim / lpips / passes / distance_left /
    stepped_back (K,K), stepped_back_walks (`stepped_back_walks`); limbs (K,K,P) and straight
    (K,K,P): source-class confidence along source->blind spot and source->target; hull_pairs (M,2) target pairs, hull_confs (K,M,66), and the path
    recordings asked for, shaped (K,K,...). With transfer_models (name -> model of the same dataset):
    transfer_models (names) and the `lst.transfer.judge_pairs` arrays, (K,K,J) with
    J = 1 + len(transfer_models), judge 0 the model itself; NaN (pred -1) on the diagonal.
    With settings.matched_fractions: matched_iters, matched_confs (K,K,F) and matched_images
    (K,K,F,C,H,W) (`LSTResult`). With restarts R > 1 (walks per pair, `traverse_in_batches`):
    restart_blind_spots (K,K,R,C,H,W), restart_{field} (K,K,R) and the `restart_geometry`
    arrays restart_spread (K,K) and restart_chord_confs (K,K,M',21).
    """
    origin = provenance()
    images, labels, target_files = example_targets(model, dataset, classes, Path(out_dir),
                                                   dataset_name, min_confidence)
    k = len(classes)
    pairs = [(s, t) for s in range(k) for t in range(k) if s != t]
    src = torch.tensor([s for s, _ in pairs])
    tgt = torch.tensor([t for _, t in pairs])
    run = traverse_in_batches(model, images[src], labels[src], images[tgt], labels[tgt],
                              (src * k + tgt).tolist(), settings, batch_size, desc="LST pairs",
                              restarts=restarts)
    missed = sorted({classes[s] for s, kept in zip(src.tolist(), run["kept"]) if not kept})
    if missed:
        log.warning("this model misclassifies the saved %s image(s) of class(es) %s (picked by "
                    "another model and reused): they are left untraversed; give another "
                    "--out_dir to pick images for this model", dataset_name, missed)
    square = PairSquare(k, src, tgt)
    results = {"classes": list(classes), "images": images.numpy(), "labels": labels.numpy(),
               "target_files": target_files,
               "init_confs": run["init_confs"].reshape(k, k - 1)[:, 0]}
    results.update(_examples_walks(run, square, images, results["init_confs"], settings, model))
    if restarts > 1:
        results.update(_examples_restarts(model, run, square, images, labels, hull_chunk,
                                          settings.precision))
    if transfer_models:
        judged = judge_pairs(judges_of(model, transfer_models),
                             torch.from_numpy(run["final_images"]), images[tgt], labels[src],
                             labels[tgt], sources=images[src],
                             progress=torch.from_numpy(1 - run["distance_left"]))
        results["transfer_models"] = list(transfer_models)
        results.update({key: square(value, -1 if key.endswith("pred") else np.nan)
                        for key, value in judged.items()})
    results.update(_examples_geometry(model, results, square, images, labels, hull_chunk,
                                      settings.precision))
    results["float32_violations"] = float32_violations(run["init_confs"], run["final_confs"],
                                                       run["kept"], settings.pthresh)
    results["stepped_back_walks"] = stepped_back_walks(run)
    if store is not None:
        key = loaded_key(run_key or store.key, model, transfer_models,
                         example_image_digests(Path(out_dir), dataset_name, classes))
        store.write("examples_dict", results_args(key, origin, flags), results)
    return results


class PairSquare:
    """The K x K square of an examples run: values of the K(K-1) pairs (source src[m], target
    tgt[m]) go off the diagonal, `diagonal` (a value, or a function of the class s) on it."""

    def __init__(self, k: int, src: torch.Tensor, tgt: torch.Tensor) -> None:
        self.k, self.src, self.tgt = k, src.numpy(), tgt.numpy()

    def __call__(self, values: np.ndarray, diagonal) -> np.ndarray:
        out = np.empty((self.k, self.k, *values.shape[1:]), dtype=values.dtype)
        out[self.src, self.tgt] = values
        for s in range(self.k):
            out[s, s] = diagonal(s) if callable(diagonal) else diagonal
        return out


def _examples_walks(run: dict, square: PairSquare, images: torch.Tensor, init: np.ndarray,
                    settings: LSTSettings, model: nn.Module) -> dict:
    """The walks' own arrays as (K,K,...) squares: blind spots (the originals on the diagonal),
    confidences, distances, passes and whatever was recorded along the paths."""
    out = {"blind_spots": square(run["final_images"], lambda s: images[s].numpy()),
           "log_iters": run["log_iters"],
           "final_confs": square(run["final_confs"], lambda s: init[s]),
           "kept": square(run["kept"], True),
           "passes": square(run["passes"], 0), "distance_left": square(run["distance_left"], 0.0),
           "stepped_back": square(run["stepped_back"], 0)}
    out.update({key: square(run[key], np.nan) for key in ("l2", "linf", "ssim", "lpips")})
    out.update({key: square(run[key], 0) for key in ("confs_over_path", "distance_over_path",
                                                     "images_over_path", "widths",
                                                     "matched_images") if run[key] is not None})
    if settings.get_layers:
        out["layer_names"] = resolve_layers(model, settings.layers)
        out["layer_scores"] = square(run["layer_scores"], np.nan)
        out["layer_scores_over_path"] = square(run["layer_scores_over_path"], np.nan)
    if run["matched_iters"] is not None:
        out["matched_iters"] = square(run["matched_iters"], -1)
        out["matched_confs"] = square(run["matched_confs"], np.nan)
    return out


def _examples_restarts(model: nn.Module, run: dict, square: PairSquare, images: torch.Tensor,
                       labels: torch.Tensor, hull_chunk: int, precision: str) -> dict:
    """The restarts of every pair as squares, and their geometry (`restart_geometry`)."""
    src, tgt = torch.from_numpy(square.src), torch.from_numpy(square.tgt)
    spots = run["restart_final_images"]
    out = {"restart_blind_spots": square(spots, lambda s: images[s].numpy()[None])}
    for name in RESTART_FIELDS:
        values = run[f"restart_{name}"]  # integer counts get 0 on the diagonal, the rest NaN
        out[f"restart_{name}"] = square(values, 0 if values.dtype.kind == "i" else np.nan)
    geometry = restart_geometry(model, images[src], labels[src], images[tgt],
                                torch.from_numpy(spots), hull_chunk, precision)
    out.update({key: square(value, np.nan) for key, value in geometry.items()})
    return out


def _examples_geometry(model: nn.Module, results: dict, square: PairSquare, images: torch.Tensor,
                       labels: torch.Tensor, hull_chunk: int, precision: str) -> dict:
    """Confidence along the limbs (source -> blind spot) and straight lines (source -> target),
    and over each source's triangles with every pair of its blind spots."""
    src, tgt = torch.from_numpy(square.src), torch.from_numpy(square.tgt)
    spots = torch.from_numpy(results["blind_spots"])
    out = {"limbs": square(segment_confidences(model, images[src], spots[src, tgt], labels[src],
                                               precision=precision).numpy(), np.nan),
           "straight": square(segment_confidences(model, images[src], images[tgt], labels[src],
                                                  precision=precision).numpy(), np.nan)}
    k = square.k
    hull_pairs = list(combinations(range(k), 2))
    confs = np.full((k, len(hull_pairs), len(triangle_grid())), np.nan, dtype=np.float32)
    for s in range(k):  # the pairs without s itself (its diagonal holds the original)
        valid = [m for m, (a, b) in enumerate(hull_pairs) if s not in (a, b)]
        confs[s, valid] = source_hull_confidences(model, images[s], labels[s], spots[s],
                                                  [hull_pairs[m] for m in valid],
                                                  chunk_size=hull_chunk, precision=precision)
    out.update(hull_pairs=np.array(hull_pairs), hull_confs=confs)
    return out


def judges_of(model: nn.Module, transfer_models: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    """The judges of `lst.transfer`: the traversed model itself first, then the others."""
    return {"": model, **transfer_models}


def full_eval_settings(settings: LSTSettings, get_final_imgs: bool) -> LSTSettings:
    """The settings a full_eval walks with: with get_final_imgs, whose blind spots are stored and
    measured as 8-bit images, `quantize` on (they are checked in float32 as such, `lst.guard`)."""
    return replace(settings, quantize=True) if get_final_imgs else settings


def stepped_back_walks(run: dict) -> int:
    """How many walks of a run (every restart's) the float32 check stepped back into the level
    set (`lst.guard`): its stepped_back arrays (restart_stepped_back with restarts) counted > 0;
    0 for results written before the check."""
    steps = run.get("restart_stepped_back", run.get("stepped_back"))
    return 0 if steps is None else int((np.asarray(steps) > 0).sum())


def float32_violations(init_confs: np.ndarray, final_confs: np.ndarray, kept: np.ndarray,
                       pthresh: float) -> float:
    """Fraction of kept pairs whose float32 confidence at the blind spot breaks the level-set
    guarantee, p0 - p_final >= pthresh (0 by construction in fp32; under bf16/fp16 the walk's
    own confidences decided acceptance). Any shapes, one value per pair."""
    kept = np.asarray(kept, dtype=bool)
    if not kept.any():
        return 0.0
    drop = np.asarray(init_confs, dtype=np.float64) - np.asarray(final_confs, dtype=np.float64)
    return float((drop[kept] >= pthresh).mean())


def _full_eval_plan(model: nn.Module, dataset: Dataset, settings: LSTSettings, num_samples: int,
                    rounds: int, store: RunStore | None, run_key: dict, rank: Rank,
                    protocol: str = "ours", min_confidence: float = MIN_CONFIDENCE) -> dict:
    """Sources and targets of the run: from the store when resuming, else chosen anew. ours:
    `num_samples` sources classified correctly with confidence > min_confidence, spread over
    the classes (`select_sources`), targets of other classes (`assign_targets`). paper (the
    paper's final code's) and pairs: every image of the dataset is a source, and round r's
    targets are a random derangement of them (`derangement_targets`) or, for image i, image
    i + r + 1 (`every_pair_targets`: rounds = len(dataset) - 1 is every ordered pair).

    Rank 0 decides and every rank gets the same plan. A saved plan of a run with other
    results-relevant arguments raises ResumeError on every rank.
    """
    plan, error = None, None
    if rank.is_main:
        try:
            plan = store.load_plan(run_key) if store is not None else None
            if plan is None:
                if protocol != "ours":  # the dataset is the pool
                    pool = np.arange(len(dataset))
                    targets = (derangement_targets(len(pool), rounds, seed=settings.seed)
                               if protocol == "paper" else every_pair_targets(len(pool), rounds))
                else:
                    pool = select_sources(model, dataset, num_samples, seed=settings.seed,
                                          min_confidence=min_confidence)
                    targets = assign_targets(dataset_labels(dataset)[pool], rounds,
                                             seed=settings.seed)
                plan = {"pool": pool, "targets": targets}
                if store is not None:
                    store.save_plan(run_key, plan)
        except (ValueError, OSError) as err:  # DataError, ResultsError, an unreadable file:
            error = err                            # every rank must stop, not wait
    plan, error = broadcast((plan, error))
    if error is not None:
        raise error
    return plan


@in_eval_mode
def run_full_eval(model: nn.Module, dataset: Dataset, settings: LSTSettings, *, num_samples: int,
                  rounds: int = 5, batch_size: int = 64, get_final_imgs: bool = False,
                  hull_chunk: int = 512, store: RunStore | None = None,
                  run_key: dict | None = None, rank: Rank = Rank(),
                  transfer_models: Mapping[str, nn.Module] | None = None,
                  flags: dict | None = None, restarts: int = 1, protocol: str = "ours",
                  num_workers: int = 0, min_confidence: float = MIN_CONFIDENCE
                  ) -> tuple[dict | None, dict | None]:
    """LST from `num_samples` sources to `rounds` targets each, resumable and sharded.

    protocol (`_full_eval_plan`): "ours" (the default), or "paper" and "pairs", whose pool is
    all of `dataset` (num_samples is not used); results["protocol"] names a protocol not ours.

    Pair k = (source k // rounds, round k % rounds) uses sample id k for its noise, so its result
    does not depend on the batch size, the number of processes or a resume. With a `store`
    (opened), every finished batch is saved there atomically with the run key, and a rerun with
    the same key skips the pairs already done; a saved plan or part with another key raises
    ResumeError. run_key: the run's identity (`lst.identity.run_key`; by default the store's
    key, else one made of the arguments, the model's class name and the dataset's), completed
    with the loaded weights (`lst.identity.loaded_key`). A store made for the run
    (`RunStore.for_run`, opened) also gets the final results files, as the command line writes
    them ({stem}_all_confs.pkl with get_final_imgs, then {stem}_fulleval_dict.pkl, args from
    `lst.identity.results_args` with `flags`), and its partial state is removed.
    Under torch.distributed (`rank`), rank r takes the pairs k % world == r; rank 0 merges all
    parts (the store must then be on a filesystem all ranks share). num_workers: processes that
    read the pairs' images (a torch DataLoader's workers; 0: this process).

    With get_final_imgs the walks run with settings.quantize (their blind spots, stored 8-bit,
    are 8-bit images checked in float32 as such, `lst.guard`).

    Returns (results, all_confs) on rank 0 and (None, None) elsewhere (`_full_eval_results`
    lists their arrays).
    """
    started, origin = time.time(), provenance()
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    settings = full_eval_settings(settings, get_final_imgs)
    run_key = run_key or (store.key if store is not None else None)
    if run_key is None:  # a run of the library without a key: what decides its results
        run_key = make_run_key(
            "full_eval", type(uncompiled(model)).__name__, type(dataset).__name__, settings,
            num_samples=num_samples, rounds=rounds, get_final_imgs=get_final_imgs,
            protocol=protocol, restarts=restarts, judges=list(transfer_models or ()),
            classes=dataset_labels(dataset).tolist() if protocol != "ours" else None,
            min_confidence=min_confidence)
    run_key = loaded_key(run_key, model, transfer_models)
    plan = _full_eval_plan(model, dataset, settings, num_samples, rounds, store, run_key, rank,
                           protocol, min_confidence)
    pairs = FullEvalPairs(dataset, plan["pool"], plan["targets"], rounds)
    n_pairs = len(pairs.pool) * rounds
    barrier()
    done = np.zeros(n_pairs, dtype=bool)
    done[store.done_pair_ids(run_key) if store is not None else []] = True
    todo = np.flatnonzero(~done)
    seconds = {"traversal": 0.0, "restarts": 0.0, "transfer": 0.0}
    in_memory = []  # the parts, without a store
    with progress_bar(total=n_pairs, initial=int(done.sum()), desc="full eval (pairs)",
                      disable=not rank.is_main, smoothing=0.05) as bar:
        for part in _walk_pairs(model, pairs, todo[todo % rank.world_size == rank.rank],
                                settings, batch_size, hull_chunk, get_final_imgs,
                                transfer_models, restarts, seconds, num_workers):
            if store is not None:
                store.save_part(run_key, part)
            else:
                in_memory.append(part)
            bar.update(len(part["pair_ids"]) * rank.world_size)
    barrier()
    if not rank.is_main:
        return None, None
    merged = _merge_parts(store.iter_parts(run_key) if store is not None else in_memory, n_pairs)
    in_memory.clear()
    results, all_confs = _full_eval_results(model, dataset, pairs, merged, settings,
                                            get_final_imgs, transfer_models, protocol,
                                            hull_chunk, seconds)
    log.info("full eval: %d pairs in %.0f s (%s), mean final confidence %.3f", n_pairs,
             time.time() - started, ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()),
             float(np.nanmean(results["final_confs"])))
    if store is not None and store.key is not None:  # the results dict last: a run counts as
        file_args = results_args(run_key, origin, flags)  # done once it exists
        for kind, values in (("all_confs", all_confs), ("fulleval_dict", results)):
            if values is not None:
                store.write(kind, file_args, values)
        store.finish()
    return results, all_confs


class FullEvalPairs:
    """The pairs of a full_eval: pair k = (source pool[k // rounds], its target in round
    k % rounds, pool[targets[k // rounds, k % rounds]]), images read from `dataset`."""

    def __init__(self, dataset: Dataset, pool: np.ndarray, targets: np.ndarray, rounds: int):
        self.dataset, self.pool, self.targets, self.rounds = dataset, pool, targets, rounds

    def batches(self, ids: np.ndarray, batch_size: int, num_workers: int = 0) -> DataLoader:
        """The pairs `ids` in order, batch_size at a time, as (sources (B,C,H,W), their labels
        (B,), targets, their labels), read by `num_workers` processes (0: this one)."""
        return DataLoader(_PairItems(self, ids), batch_size=batch_size, shuffle=False,
                          num_workers=num_workers)


class _PairItems(Dataset):
    """Item k: (source image, label, target image, label) of pair ids[k]."""

    def __init__(self, pairs: FullEvalPairs, ids: np.ndarray) -> None:
        self.pairs, self.ids = pairs, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int) -> tuple:
        p = self.pairs
        source, round_ = divmod(int(self.ids[k]), p.rounds)
        image, label = p.dataset[int(p.pool[source])]
        target, target_label = p.dataset[int(p.pool[p.targets[source, round_]])]
        return image, int(label), target, int(target_label)


def _walk_pairs(model: nn.Module, pairs: FullEvalPairs, mine: np.ndarray, settings: LSTSettings,
                batch_size: int, hull_chunk: int, get_final_imgs: bool,
                transfer_models: Mapping[str, nn.Module] | None, restarts: int,
                seconds: dict, num_workers: int = 0) -> Iterable[dict]:
    """The results of the pairs `mine`, one batch at a time (a dict of numpy arrays with their
    "pair_ids"; images 8-bit with get_final_imgs, else left out). Adds to `seconds`."""
    judges = judges_of(model, transfer_models) if transfer_models else None
    batches = pairs.batches(mine, batch_size, num_workers)
    for part, (src_images, src_labels, tgt_images, tgt_labels) in zip(
            chunks(len(mine), batch_size), batches):
        ids = mine[part]
        clock = time.time()
        run = traverse_in_batches(model, src_images, src_labels, tgt_images, tgt_labels,
                                  ids.tolist(), settings, batch_size, progress=False,
                                  restarts=restarts)
        seconds["traversal"] += time.time() - clock
        if restarts > 1:
            clock = time.time()
            run.update(restart_geometry(model, src_images, src_labels, tgt_images,
                                        torch.from_numpy(run["restart_final_images"]),
                                        hull_chunk, settings.precision))
            seconds["restarts"] += time.time() - clock
        if judges is not None:
            clock = time.time()
            run.update(judge_pairs(judges, torch.from_numpy(run["final_images"]), tgt_images,
                                   src_labels, tgt_labels, sources=src_images,
                                   progress=torch.from_numpy(1 - run["distance_left"])))
            seconds["transfer"] += time.time() - clock
        for key in ("final_images", "matched_images", "restart_final_images"):
            if run.get(key) is not None and get_final_imgs:  # 8-bit, as the results hold them
                run[key] = to_uint8(run[key])
            else:
                run.pop(key, None)
        run["pair_ids"] = ids
        yield run


def _full_eval_results(model: nn.Module, dataset: Dataset, pairs: FullEvalPairs, merged: dict,
                       settings: LSTSettings, get_final_imgs: bool,
                       transfer_models: Mapping[str, nn.Module] | None, protocol: str,
                       hull_chunk: int, seconds: dict) -> tuple[dict, dict | None]:
    """The results dict of a full_eval (and all_confs with get_final_imgs) from its merged
    pairs: arrays reshaped (N sources, R rounds, ...), Tables 2 and 2b, matched geometry.

    results (N sources, R rounds): source_indices (N,), labels (N,), target_indices /
    target_labels (N,R), init_confs (N,R) (p0 of the source, per pair), final_confs, kept, accept_rate, passes, distance_left,
    l2, linf, ssim, lpips, stepped_back (N,R), float32_violations (a float, see
    `float32_violations`), stepped_back_walks (an int, `stepped_back_walks`), path
    recordings (N,R,...) when asked, and with get_final_imgs final_images
    (N,R,C,H,W) uint8, hull_stats (dict of (N,) arrays, Table 2) and segment_stats (dict of
    (N,) arrays, Table 2b: limbs and chords kept); with transfer_models (name -> model of the
    same dataset) transfer_models (names) and the `lst.transfer.judge_pairs` arrays, (N,R,J),
    J = 1 + len(transfer_models), judge 0 the model itself. With settings.matched_fractions
    (F of them): matched_iters and matched_confs (N,R,F) and, with get_final_imgs,
    matched_images (N,R,F,C,H,W) uint8 and matched_stats (`_matched_stats`: per fraction and
    "final", dicts of (N,) arrays). With restarts K > 1 (walks per pair, `traverse_in_batches`):
    restart_{field} (N,R,K), restart_spread (N,R) and restart_chord_confs (N,R,M',21)
    (`lst.restarts.restart_geometry`) and, with get_final_imgs, restart_final_images
    (N,R,K,C,H,W) uint8; with get_final_imgs source_images (N,C,H,W) uint8 (the targets are
    sources too: target r of source n is row `pairs.targets[n, r]`). seconds: the time of this
    call's parts (traversal, restarts, transfer, triangles, limbs_chords, matched). all_confs
    (with get_final_imgs, else None): hull_pairs (M,2) round pairs, hull_confs (N,M,66),
    limb_confs (N,R,21), chord_confs (N,M,21) and straight_confs (N,R,21), source to target,
    float32.
    """
    pool, targets, rounds, n = pairs.pool, pairs.targets, pairs.rounds, len(pairs.pool)
    labels = dataset_labels(dataset)[pool]
    results = {"source_indices": pool, "labels": labels, "target_indices": pool[targets],
               "target_labels": labels[targets], "log_iters": merged.pop("log_iters")}
    if protocol != "ours":
        results["protocol"] = protocol
    if settings.get_layers:
        results["layer_names"] = resolve_layers(model, settings.layers)
    if transfer_models:
        results["transfer_models"] = list(transfer_models)
    blind = merged.pop("final_images", None)
    for key, value in merged.items():
        results[key] = value.reshape(n, rounds, *value.shape[1:])
    all_confs = None
    if get_final_imgs:
        results["final_images"] = blind = blind.reshape(n, rounds, *blind.shape[1:])
        (results["hull_stats"], results["segment_stats"], all_confs,
         results["source_images"]) = _full_eval_hulls(model, dataset, pool, targets, blind,
                                                      hull_chunk, settings.precision, seconds)
        if settings.matched_fractions:
            results["matched_stats"] = _matched_stats(
                model, dataset, pool, results["matched_images"], results["matched_iters"],
                settings.matched_fractions, all_confs, hull_chunk, settings.precision, seconds)
    results["float32_violations"] = float32_violations(results["init_confs"],
                                                       results["final_confs"], results["kept"],
                                                       settings.pthresh)
    results["stepped_back_walks"] = stepped_back_walks(results)
    results["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    return results, all_confs


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Images in [0,1] (float) as 8-bit: round(255 x); uint8 images as they are."""
    if images.dtype == np.uint8:
        return images
    return (torch.from_numpy(images) * 255).round().to(torch.uint8).numpy()


def _merge_parts(parts: Iterable[dict], n_pairs: int) -> dict:
    """Per-batch results, read one batch at a time, into arrays indexed by pair id
    (0..n_pairs-1): memory holds the merged arrays and one batch, never all batches at once.
    Parts with other fields or shapes than the first raise ResumeError (never a row left
    unwritten). final_images come out 8-bit (parts saved before they were stored 8-bit are rounded here)."""
    merged, seen = None, np.zeros(n_pairs, dtype=bool)
    for part in parts:
        ids = np.asarray(part["pair_ids"], dtype=np.int64)
        arrays = {k: (to_uint8(v) if k == "final_images" else np.asarray(v))
                  for k, v in part.items() if k not in ("pair_ids", "log_iters") and v is not None}
        if merged is None:
            merged = {"log_iters": part["log_iters"]}
            merged.update({k: np.empty((n_pairs, *v.shape[1:]), dtype=v.dtype)
                           for k, v in arrays.items()})
        fields = {k: v.shape[1:] for k, v in merged.items() if k != "log_iters"}
        if {k: v.shape[1:] for k, v in arrays.items()} != fields:
            differ = sorted(set(fields) ^ set(arrays)) or sorted(
                k for k in fields if fields[k] != arrays[k].shape[1:])
            raise ResumeError(f"saved parts hold different fields ({', '.join(differ)}; pairs "
                              f"{int(ids[0])}-{int(ids[-1])}): they were written by another "
                              "version of this tool; start the run again with --fresh")
        if seen[ids].any():
            raise ResumeError(f"pair {int(ids[seen[ids]][0])} is saved twice")
        seen[ids] = True
        for key, value in arrays.items():
            merged[key][ids] = value
    if merged is None or not seen.all():
        raise ResumeError(f"saved parts cover {int(seen.sum())} of {n_pairs} pairs")
    return merged


def _full_eval_hulls(model: nn.Module, dataset: Dataset, pool: np.ndarray, targets: np.ndarray,
                     blind: np.ndarray, hull_chunk: int, precision: str, seconds: dict
                     ) -> tuple[dict, dict, dict, np.ndarray]:
    """Tables 2 and 2b: each source with every pair of its blind spots, and the straight limbs
    and chords between them, one source at a time (blind: (N,R,C,H,W) uint8, the 8-bit blind
    spots the results hold, so the tables describe the saved images; targets: (N,R) positions
    in `pool`). Also the straight lines from each source to its targets, and the sources 8-bit
    (N,C,H,W), for the explorer. Adds the time of the triangles and of the limbs, chords and
    lines to `seconds`."""
    n, rounds = blind.shape[:2]
    hull_pairs = list(combinations(range(rounds), 2))
    confs = torch.empty(n, len(hull_pairs), len(triangle_grid()))
    limbs, lines = torch.empty(n, rounds, SEGMENT_POINTS), torch.empty(n, rounds, SEGMENT_POINTS)
    chords = torch.empty(n, len(hull_pairs), SEGMENT_POINTS)
    sources = np.empty((n, *blind.shape[2:]), dtype=np.uint8)
    seconds.update(triangles=0.0, limbs_chords=0.0)
    with progress_bar(range(n), desc="hulls", leave=False) as bar:
        for i in bar:
            image, label = dataset[int(pool[i])]
            sources[i] = to_uint8(image.numpy())
            spots = torch.from_numpy(np.asarray(blind[i])).float() / 255
            clock = time.time()
            confs[i] = source_hull_confidences(model, image, label, spots, hull_pairs,
                                               chunk_size=hull_chunk, precision=precision)
            seconds["triangles"] += time.time() - clock
            clock = time.time()
            limbs[i], chords[i] = limbs_and_chords(model, image, label, spots, hull_pairs,
                                                   confs[i], hull_chunk, precision)
            ends, _ = stack_items(dataset, pool[targets[i]])
            lines[i] = segment_confidences(model, image.expand_as(ends), ends,
                                           torch.full((rounds,), int(label)),
                                           chunk_size=hull_chunk, precision=precision)
            seconds["limbs_chords"] += time.time() - clock
    return table2_stats(confs), segment_stats(limbs.numpy(), chords.numpy()), {
        "hull_pairs": np.array(hull_pairs), "hull_confs": confs.numpy(),
        "limb_confs": limbs.numpy(), "chord_confs": chords.numpy(),
        "straight_confs": lines.numpy()}, sources


def _matched_stats(model: nn.Module, dataset: Dataset, pool: np.ndarray, matched: np.ndarray,
                   matched_iters: np.ndarray, fractions: Sequence[float], all_confs: dict,
                   hull_chunk: int, precision: str, seconds: dict) -> dict[str, dict]:
    """Geometry at matched progress (docs/design.md, "Geometry at matched progress"): for each
    fraction f, each source's limbs (source -> a(f)), chords (a(f) -> b(f)) and triangles
    (source, a(f), b(f)) between the first iterates of its walks at f (matched: (N,R,F,C,H,W)
    uint8, matched_iters (N,R,F), -1 where a walk never got that far), and the same for the
    blind spots themselves ("final", from all_confs).

    Returns {"0.25": stats, ..., "final": stats}, stats a dict of (N,) float64 arrays: reached
    (fraction of the source's walks that reached f) and the `lst.hull.kept_stats` of the walks
    that did (NaN for a source with fewer than two). Adds the time to seconds["matched"].
    """
    n, rounds = matched_iters.shape[:2]
    rows: list[list[dict]] = [[] for _ in fractions]  # per fraction, one dict per source
    clock = time.time()
    for i in progress_bar(range(n), desc="matched progress", leave=False):
        image, label = dataset[int(pool[i])]
        for f in range(len(fractions)):
            reached = np.flatnonzero(matched_iters[i, :, f] >= 0)
            row = {"reached": len(reached) / rounds}
            if len(reached) >= 2:
                spots = torch.from_numpy(np.asarray(matched[i, reached, f])).float() / 255
                pairs = list(combinations(range(len(reached)), 2))
                triangles = source_hull_confidences(model, image, label, spots, pairs,
                                                    chunk_size=hull_chunk, precision=precision)
                limbs, chords = limbs_and_chords(model, image, label, spots, pairs, triangles,
                                                 hull_chunk, precision)
                row.update(kept_stats(limbs.numpy(), chords.numpy(), triangles.numpy()))
            rows[f].append(row)
    out = {f"{fraction:g}": _columns(per_source) for fraction, per_source in zip(fractions, rows)}
    out["final"] = _columns([{"reached": 1.0, **kept_stats(all_confs["limb_confs"][i],
                                                           all_confs["chord_confs"][i],
                                                           all_confs["hull_confs"][i])}
                             for i in range(n)])
    seconds["matched"] = time.time() - clock
    return out


def _columns(rows: list[dict]) -> dict[str, np.ndarray]:
    """Per-source dicts (some with fewer keys) as one (N,) float64 array per key, NaN where a
    source has no value."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return {k: np.array([row.get(k, np.nan) for row in rows], dtype=np.float64) for k in keys}
