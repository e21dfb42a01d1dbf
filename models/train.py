"""Train a CIFAR-size classifier, normally or adversarially (L-inf PGD or FGSM with random start).

    python -m models.train smallcnn shapes --out models/weights/smallcnn-normal.pt
    python -m models.train smallcnn shapes --adv pgd --out models/weights/smallcnn-linf.pt
    python -m models.train resnet20 cifar10 --data_path ../shared/data/cifar10 --epochs 100 \
        --bf16 --channels_last --out resnet20.pt
    python -m models.train resnet20 cifar10 --data_path ../shared/data/cifar10 --epochs 20 \
        --lr 0.05 --init resnet20.pt --out resnet20-b.pt   # a warm restart from resnet20.pt
    python -m models.train vit cifar10 --data_path ../shared/data/cifar10 --optimizer adamw \
        --lr 1e-3 --weight_decay 0.05 --label_smoothing 0.1 --epochs 60 --bf16 --out vit.pt

(the exact commands of the shipped weights: models/MODEL_CARD.md)

Seeded; a checkpoint (OUT.ckpt) is written atomically after every epoch and a rerun of the same
command resumes from it. The weights file holds the architecture name, the state dict and a
`meta` dict with the command, training time and clean and PGD-20 test accuracies.
"""
from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from torch import nn

from lst.batching import chunks
from lst.data import DataError, load_dataset
from lst.precision import autocast
from lst.progress import progress_bar
from lst.results import ResultsError, atomic_write
from models.architectures import ARCHITECTURES

log = logging.getLogger(__name__)


def atomic_torch_save(obj: object, path: str | Path) -> None:
    """torch.save through `lst.results.atomic_write`: never a half-written file."""
    atomic_write(path, lambda f: torch.save(obj, f))


def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float,
               steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """L-inf PGD with a uniform random start: (N,C,H,W) in [0,1] -> adversarial images in [0,1]."""
    delta = (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * eps
    x_adv = (x + delta).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            grad, = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = x_adv.detach() + step_size * grad.sign()
        x_adv = (x + (x_adv - x).clamp(-eps, eps)).clamp(0, 1)
    return x_adv.detach()


def in_memory(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All of a dataset as (N,C,H,W) uint8 images and (N,) labels."""
    images = getattr(dataset, "images", None)
    if images is not None:  # shapes keeps its uint8 images already
        return images, torch.as_tensor(dataset.targets)
    xs, ys = [], []
    for x, y in progress_bar(dataset, desc="loading", leave=False):
        xs.append((x * 255).round().to(torch.uint8))
        ys.append(y)
    return torch.stack(xs), torch.tensor(ys)


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding and random horizontal flip, per sample. (N,C,H,W)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.stack([padded[k, :, dy[k]:dy[k] + h, dx[k]:dx[k] + w] for k in range(n)])
    out[flip] = out[flip].flip(-1)
    return out


def evenly_spaced(total: int, n: int) -> torch.Tensor:
    """min(n, total) indices spread evenly over range(total), (n,) int64: a class-folder split is
    sorted by class, so its first images would all be one class."""
    return torch.linspace(0, total - 1, min(n, total)).round().long()


@torch.no_grad()
def clean_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   batch_size: int = 500) -> float:
    """Fraction of (N,C,H,W) uint8 `images` that `model` (put in eval mode) classifies right."""
    model.eval()
    correct = 0
    for part in chunks(len(images), batch_size):
        correct += (model(images[part].float() / 255).argmax(1) == labels[part]).sum().item()
    return correct / max(len(images), 1)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float = 8 / 255,
             pgd_steps: int = 20, pgd_samples: int = 1000, batch_size: int = 500) -> dict:
    """Clean accuracy on all images; PGD-`pgd_steps` (step eps/4) accuracy on `pgd_samples`
    images chosen by `evenly_spaced`."""
    clean_acc = clean_accuracy(model, images, labels, batch_size)
    robust = 0
    spread = evenly_spaced(len(images), pgd_samples)
    n_pgd = len(spread)
    generator = torch.Generator().manual_seed(0)
    for part in chunks(n_pgd, batch_size):
        x, y = images[spread[part]].float() / 255, labels[spread[part]]
        x_adv = pgd_attack(model, x, y, eps, eps / 4, pgd_steps, generator)
        robust += (model(x_adv).argmax(1) == y).sum().item()
    return {"clean_acc": clean_acc, "pgd_acc": robust / max(n_pgd, 1),
            "pgd_steps": pgd_steps, "pgd_samples": n_pgd, "eps": eps}


def warm_start(model: nn.Module, path: str, arch: str) -> dict:
    """Load the weights file `path` (written by this trainer for `arch`) into `model`; return
    its meta dict, kept in the new file's meta so the whole training history stays readable."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob["arch"] != arch:
            raise DataError(f"--init {path} holds a {blob['arch']}, not a {arch}")
        model.load_state_dict(blob["state_dict"])
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"--init {path} is not a weights file of this trainer ({type(err).__name__})") from None
    return blob["meta"]


def train(args: argparse.Namespace) -> dict:
    """Train (or resume) as the arguments say; write the weights file; return its meta dict."""
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    train_set = load_dataset(args.dataset, root=args.data_path, split="train", seed=args.data_seed)
    test_set = load_dataset(args.dataset, root=args.data_path, split="test", seed=args.data_seed)
    x_train, y_train = in_memory(train_set)
    x_test, y_test = in_memory(test_set)
    num_classes = int(y_train.max()) + 1
    if args.train_samples:
        spread = evenly_spaced(len(x_train), args.train_samples)
        x_train, y_train = x_train[spread], y_train[spread]
    model = ARCHITECTURES[args.arch](num_classes=num_classes)
    init_meta = warm_start(model, args.init, args.arch) if args.init else None
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    if args.optimizer == "adamw":  # timm's: no weight decay on biases and norm layers
        optimizer = create_optimizer_v2(model, "adamw", lr=args.lr, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                                    weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr,
                                                    total_steps=args.epochs * steps_per_epoch)
    ckpt_path = Path(str(args.out) + ".ckpt")
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "threads", "num_workers", "argv")}
    start_epoch, elapsed, epoch_seconds, epoch_accuracy = 0, 0.0, [], []
    generator = torch.Generator().manual_seed(args.seed)
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt["settings"] != settings:
            raise DataError(f"{ckpt_path} was written with other settings; delete it to start over")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        generator.set_state(ckpt["generator"])
        start_epoch, elapsed = ckpt["epoch"], ckpt["elapsed"]
        epoch_seconds = ckpt.get("epoch_seconds", [])  # absent in checkpoints of before 2026-11-30
        epoch_accuracy = ckpt.get("epoch_accuracy", [])  # absent in checkpoints of before 2026-12-02
        log.info("resuming %s from epoch %d", ckpt_path, start_epoch)

    watch = evenly_spaced(len(x_test), 1000)  # a progress check after every epoch
    eps, alpha = args.eps, args.adv_step_size or (args.eps / 4 if args.adv == "pgd" else 1.25 * args.eps)
    for epoch in range(start_epoch, args.epochs):
        model.train()
        started = time.time()
        order = torch.randperm(len(x_train), generator=generator)
        bar = progress_bar(chunks(len(order), args.batch_size), total=steps_per_epoch,
                   desc=f"epoch {epoch + 1}/{args.epochs}", leave=False)
        for part in bar:
            idx = order[part]
            x = x_train[idx]
            if args.dataset != "shapes":
                x = augment(x, generator)
            x, y = (x.float() / 255).contiguous(memory_format=memory_format), y_train[idx]
            # bf16 autocast runs convolutions and matmuls in bfloat16; weights, optimizer state
            # and the saved file stay float32 (evaluation below runs in float32).
            with autocast("bf16" if args.bf16 else "fp32", x.device):
                if args.adv != "none":
                    model.eval()  # attack the current model without touching BN statistics
                    steps = args.pgd_steps if args.adv == "pgd" else 1
                    x = pgd_attack(model, x, y, eps, alpha, steps, generator)
                    model.train()
                loss = F.cross_entropy(model(x), y, label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        # wall time: a process that was paused (or shared the cores) counts that time too
        epoch_seconds.append(round(time.time() - started, 1))
        elapsed += epoch_seconds[-1]
        # a check after every epoch; for adversarial training also PGD accuracy on the first
        # watch_pgd_samples of the watched images, where catastrophic overfitting shows first
        checked = {"epoch": epoch + 1, "clean_acc": clean_accuracy(model, x_test[watch], y_test[watch])}
        if args.adv != "none" and args.watch_pgd_samples:
            few = watch[evenly_spaced(len(watch), args.watch_pgd_samples)]
            checked["pgd_acc"] = evaluate(model, x_test[few], y_test[few], eps=8 / 255,
                                          pgd_steps=args.eval_pgd_steps, pgd_samples=len(few))["pgd_acc"]
        epoch_accuracy.append(checked)
        atomic_torch_save({"settings": settings, "model": model.state_dict(),
                           "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                           "generator": generator.get_state(), "epoch": epoch + 1,
                           "elapsed": elapsed, "epoch_seconds": epoch_seconds,
                           "epoch_accuracy": epoch_accuracy}, ckpt_path)
        log.info("epoch %d done in %.0f s, %.0f s so far; last loss %.3f, clean accuracy %.3f on "
                 "%d test images%s", epoch + 1, epoch_seconds[-1], elapsed, loss.item(),
                 checked["clean_acc"], len(watch),
                 f", PGD-{args.eval_pgd_steps} accuracy {checked['pgd_acc']:.3f} on "
                 f"{args.watch_pgd_samples}" if "pgd_acc" in checked else "")

    model = model.to(memory_format=torch.contiguous_format).eval()
    meta = {"arch": args.arch, "dataset": args.dataset, "adv": args.adv, "epochs": args.epochs,
            "seed": args.seed, "bf16": args.bf16, "channels_last": args.channels_last,
            "train_seconds": round(elapsed, 1), "epoch_seconds": epoch_seconds,
            "epoch_accuracy": epoch_accuracy,
            "train_samples": len(x_train),
            "threads": torch.get_num_threads(), "init": init_meta,
            "command": "python -m models.train " + " ".join(shlex.quote(a) for a in args.argv)}
    meta.update(evaluate(model, x_test, y_test, eps=8 / 255, pgd_steps=args.eval_pgd_steps,
                         pgd_samples=args.eval_pgd_samples))
    atomic_torch_save({"arch": args.arch, "num_classes": num_classes,
                       "state_dict": model.state_dict(), "meta": meta}, args.out)
    return meta


def train_model(arch: str, dataset: str, out: str | Path, **options) -> dict:
    """Train as `python -m models.train ARCH DATASET --out OUT --OPTION VALUE ...` does, with the
    same defaults, and return the meta dict of the weights file it writes. Raises DataError."""
    argv = [arch, dataset, "--out", str(out)]
    for name, value in options.items():
        flag = f"--{name}"
        if value is True:
            argv.append(flag)
        elif value not in (False, None):
            argv += [flag, str(value)]
    return train(parse_args(argv))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n")[0])
    p.add_argument("arch", choices=sorted(ARCHITECTURES))
    p.add_argument("dataset", choices=["shapes", "cifar10"])
    p.add_argument("--data_path", default=None, help="cifar10: torchvision root or folder with train/ and test/")
    p.add_argument("--out", required=True, help="weights file to write; OUT.ckpt is the checkpoint")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight_decay", type=float, default=5e-4)
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd",
                   help="sgd: Nesterov momentum 0.9; adamw: timm's (no decay on biases and norms)")
    p.add_argument("--label_smoothing", type=float, default=0.0)
    p.add_argument("--adv", choices=["none", "pgd", "fgsm"], default="none")
    p.add_argument("--eps", type=float, default=8 / 255)
    p.add_argument("--pgd_steps", type=int, default=5, help="PGD steps per training batch")
    p.add_argument("--adv_step_size", type=float, default=None,
                   help="attack step (default eps/4 for PGD, 1.25 eps for FGSM)")
    p.add_argument("--train_samples", type=int, default=0,
                   help="use only N evenly spaced training images (0: all)")
    p.add_argument("--eval_pgd_steps", type=int, default=20)
    p.add_argument("--eval_pgd_samples", type=int, default=1000)
    p.add_argument("--watch_pgd_samples", type=int, default=200,
                   help="adversarial training: PGD accuracy on this many test images after every "
                        "epoch, to catch catastrophic overfitting (0: off)")
    p.add_argument("--init", default=None,
                   help="start from this weights file (a warm restart: new optimizer and schedule)")
    p.add_argument("--bf16", action="store_true",
                   help="train under bfloat16 autocast (about 1.7x faster on CPUs with AMX or "
                        "AVX512-BF16); weights stay float32")
    p.add_argument("--channels_last", action="store_true",
                   help="channels-last memory format (faster convolutions on CPU and CUDA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data_seed", type=int, default=0, help="generation seed of shapes")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--num_workers", type=int, default=0)
    args = p.parse_args(argv)
    args.argv = argv
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        meta = train(args)
    except (DataError, ResultsError) as err:
        sys.exit(f"error: {err}")
    print(f"{args.out}: clean accuracy {meta['clean_acc']:.4f}, PGD-{meta['pgd_steps']} accuracy "
          f"{meta['pgd_acc']:.4f} (eps 8/255, {meta['pgd_samples']} images), "
          f"trained {meta['train_seconds']:.0f} s")


if __name__ == "__main__":
    main()
