"""Level Set Traversal: find and measure the blind spots of image classifiers.

    import lst
    settings = lst.LSTSettings(step_size=1e-2, iters=400, pthresh=0.2, adv_step_size=2e-3)
    result = lst.level_set_traversal(model, sources, labels, targets, settings)
    result = lst.level_set_traversal(model, sources, labels, targets, iters=400)  # or by field
    dists = lst.image_distances(result.final_images, targets)

The whole pipeline of the command line, for any model and any dataset of (image, label):

    key = lst.run_key("examples", "mynet", "pets", settings, classes=[0, 1, 2])
    store = lst.RunStore.for_run("out", key)
    with store.open():
        results = lst.run_examples(model, dataset, [0, 1, 2], settings, out_dir="out",
                                   dataset_name="pets", store=store)
    # and lst.run_full_eval(model, dataset, settings, num_samples=100, store=store) for a
    # "full_eval" key; `python print_tables.py out` reads both.

A model maps [0,1] images (N,C,H,W) to logits; every computation runs on the model's device.
"""
from .confidence import class_confidence_of, model_device, predict, probabilities
from .experiments import run_examples, run_full_eval
from .hull import (HULL_DELTAS, delta_curve, hull_confidences, hull_stats, limbs_and_chords,
                   segment_confidences, segment_stats, source_hull_confidences, source_hull_stats,
                   triangle_grid)
from .layers import default_layers, layer_scores
from .metrics import image_distances, lpips_network
from .identity import run_key
from .runstore import RunStore
from .transfer import judge
from .traversal import LSTResult, LSTSettings, initial_noise, level_set_traversal, orthogonal_step
from .uncertainty import estimate
from .widths import path_widths, random_orthogonal_directions

__all__ = [
    "HULL_DELTAS", "LSTResult", "LSTSettings", "RunStore", "class_confidence_of",
    "default_layers", "delta_curve", "estimate",
    "hull_confidences", "hull_stats", "image_distances", "initial_noise", "judge", "layer_scores",
    "level_set_traversal", "limbs_and_chords", "lpips_network", "model_device", "orthogonal_step",
    "path_widths", "predict", "probabilities", "random_orthogonal_directions", "run_examples",
    "run_full_eval", "run_key",
    "segment_confidences", "segment_stats", "source_hull_confidences", "source_hull_stats",
    "triangle_grid",
]
