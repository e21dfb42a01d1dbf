"""Robust accuracy as the field reports it: AutoAttack (Croce and Hein, 2020; the `autoattack`
code of the `pyautoattack` package) at L-inf eps 8/255, on the evenly spaced test images the
trainer's PGD-20 figure uses.

    python -m models.robustness resnet20-linf cifar10 --data_path ../shared/data/cifar10
    python -m models.robustness vit-linf cifar10 --data_path ../shared/data/cifar10 \\
        --attacks apgd-ce apgd-t      # reduced: APGD-CE and APGD-T, standard parameters

The standard version runs APGD-CE, APGD-T (9 target classes), FAB-T and Square (5,000
queries), each on the images still robust; `--attacks` runs the first of them with the same
parameters (the reduced version). Resumable: OUT.state.json records the attacks done, their
seconds and the images still robust after each, and a rerun goes on from it (a reduced rerun
also from a standard run stopped after those attacks). Writes OUT (JSON: model, version,
attacks, images, clean and robust accuracy, seconds) atomically.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
from pyautoattack import AutoAttack

from lst.batching import chunks
from lst.confidence import model_device
from lst.data import DataError, load_dataset
from lst.results import ResultsError, atomic_write
from models.files import ModelError
from models.registry import load_model
from models.train import evenly_spaced, in_memory

log = logging.getLogger(__name__)

STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")


def autoattack_accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                        eps: float = 8 / 255, attacks: tuple[str, ...] = STANDARD,
                        batch_size: int = 250, state_path: Path | None = None,
                        seed: int = 0) -> dict:
    """AutoAttack's robust accuracy of `model` (on [0,1] images, in eval mode) on (N,C,H,W)
    float images in [0,1] with (N,) labels, with the standard version's parameters (APGD-CE one
    restart, APGD-T and FAB-T nine target classes, Square 5,000 queries): all four attacks
    (version "standard") or the given ones in the standard order ("reduced"; AutoAttack's own
    "custom" version would run APGD-CE with five restarts instead). As AutoAttack does, each
    attack runs on the images still robust; after each, the robust flags and the attack's
    seconds go to `state_path` (JSON, atomically). A call with an existing state file for the
    same images goes on after the attacks done, which must be the first of `attacks` (so a
    reduced run can resume a standard one stopped after its first attacks); pyautoattack 0.2.0's
    own state file cannot be resumed (it compares a set with the list it reads back). Returns
    clean_acc, robust_acc (fractions of N), the attacks, the version and the attacks' seconds."""
    unknown = set(attacks) - set(STANDARD)
    if unknown:
        raise ValueError(f"unknown attacks {sorted(unknown)}; choose among {STANDARD}")
    attacks = tuple(a for a in STANDARD if a in attacks)
    device = model_device(model)
    adversary = AutoAttack(model, device=device, eps=eps, norm="Linf", seed=seed,
                           version="standard")
    with torch.no_grad():
        predicted = torch.cat([model(images[part].to(device)).argmax(1).cpu()
                               for part in chunks(len(images), batch_size)])
    identity = {"images": len(images), "eps": eps, "labels": labels.tolist()}
    state = {**identity, "done": [], "seconds": {}, "robust": (predicted == labels).tolist()}
    if state_path is not None and state_path.exists():
        saved = json.loads(state_path.read_text())
        if {k: saved.get(k) for k in identity} != identity:
            raise DataError(f"{state_path} holds another evaluation; delete it to start over")
        if list(attacks[:len(saved["done"])]) != saved["done"]:
            raise DataError(f"{state_path} has run {', '.join(saved['done'])}, not the first of "
                            f"{', '.join(attacks)}; delete it to start over")
        state = {"seconds": {}, **saved}
    clean = float(predicted.eq(labels).float().mean())
    robust = torch.tensor(state["robust"])
    for attack in attacks:
        if attack in state["done"]:
            continue
        started = time.time()
        still = robust.nonzero().flatten()
        if len(still):
            adversary.attacks_to_run = [attack]  # the standard version's parameters stay
            _, predicted_adv = adversary.run_standard_evaluation(images[still], labels[still],
                                                                 batch_size=batch_size)
            robust[still] = predicted_adv.cpu().eq(labels[still])
        state.update(done=state["done"] + [attack], robust=robust.tolist(),
                     seconds={**state["seconds"], attack: round(time.time() - started, 1)})
        if state_path is not None:
            atomic_write(state_path, lambda f: f.write(json.dumps(state).encode()))
        log.info("after %s: robust accuracy %.4f", attack, robust.float().mean().item())
    return {"clean_acc": clean, "robust_acc": robust.float().mean().item(),
            "attacks": list(attacks), "version": "standard" if attacks == STANDARD else "reduced",
            "attack_seconds": state["seconds"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.robustness", description=__doc__.split("\n")[0])
    p.add_argument("model", help="a registry name, e.g. resnet20-linf")
    p.add_argument("dataset", help="cifar10 or shapes")
    p.add_argument("--data_path", default=None, help="the dataset's folder (cifar10)")
    p.add_argument("--samples", type=int, default=1000, help="evenly spaced test images")
    p.add_argument("--attacks", nargs="+", default=list(STANDARD), choices=STANDARD,
                   help="default: the standard version (all four); fewer: the reduced version")
    p.add_argument("--eps", type=float, default=8 / 255)
    p.add_argument("--batch_size", type=int, default=250)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="JSON file (default: MODEL_autoattack.json)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out or f"{args.model}_autoattack.json")
    started = time.time()
    try:
        model, _ = load_model(args.model, args.dataset, device=args.device)
        test = load_dataset(args.dataset, root=args.data_path, split="test")
        pixels, labels = in_memory(test)
        pick = evenly_spaced(len(pixels), args.samples)
        images, labels = pixels[pick].float() / 255, labels[pick]
        result = autoattack_accuracy(model, images, labels, eps=args.eps,
                                     attacks=tuple(args.attacks), batch_size=args.batch_size,
                                     state_path=out.with_suffix(".state.json"))
        result.update(model=args.model, images=len(images), eps=args.eps,
                      seconds=round(time.time() - started, 1))
        atomic_write(out, lambda f: f.write(json.dumps(result, indent=1).encode()))
    except (DataError, ModelError, ResultsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.model}: AutoAttack ({result['version']}: {', '.join(result['attacks'])}) "
          f"robust accuracy {result['robust_acc']:.4f}, clean {result['clean_acc']:.4f} on "
          f"{len(images)} test images, eps {args.eps:.4g}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
