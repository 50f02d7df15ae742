"""DARTS speed: seconds per search step of the project's search against NNI's own ``strategy.DARTS``
on ``nni.nas.hub.pytorch.DARTS`` (same width, cells and batch, one process), and retrain images/s.

A search step is one first-order DARTS iteration: an architecture step on a batch of the second
half and a weight step on a batch of the first half. NNI's runs through its Lightning module
(``DartsLightningModule``) with ``Classification`` as the evaluator, as NNI's docs show it; the
project's is ``oneshot_darts.search.DartsSearch.train_step`` (the core engine's DARTS step) fed by the core's loader. Both on the same
synthetic images; the first ``--warmup`` steps of each are not timed; the figure is the median
step. The retrain figure is the core Trainer's images/s over the fixed DARTS-V2 network
(``oneshot_darts/retrain.py``'s path: auxiliary head, drop path, cutout), warm epoch.

    python benchmarks/bench_darts.py                     # small sizes: a few minutes on 2 CPU cores
    python benchmarks/bench_darts.py --channels 16 --layers 8 --batch-size 64 \
        --retrain-channels 36 --retrain-layers 20 --retrain-batch-size 96    # the paper's sizes
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_project_search(args, device: torch.device) -> list[float]:
    from core.runner import load_splits
    from core.train import seed_everything
    from oneshot_darts.search import DartsSearch, SearchConfig
    from oneshot_darts.space import build_supernet

    steps = args.warmup + args.steps
    cfg = SearchConfig(data="fake", channels=args.channels, layers=args.layers, n_nodes=args.nodes,
                       batch_size=args.batch_size, max_batches=steps, epochs=1, device=device.type, progress=False,
                       subset=steps * args.batch_size, val_subset=steps * args.batch_size)
    splits = load_splits(cfg)
    seed_everything(cfg.seed)
    supernet = build_supernet(channels=cfg.channels, layers=cfg.layers, n_nodes=cfg.n_nodes,
                              stem_multiplier=cfg.stem_multiplier, num_classes=splits.num_classes)
    search = DartsSearch(supernet, cfg, splits)
    search.model.train()
    times = []
    sync(device)
    start = time.perf_counter()
    for batch in search.batches():
        search.train_step(batch)
        sync(device)
        now = time.perf_counter()
        times.append(now - start)
        start = now
    return times[args.warmup:]


def time_nni_search(args, device: torch.device) -> list[float]:
    import pytorch_lightning as pl
    from nni.nas import strategy
    from nni.nas.evaluator.pytorch import Classification, DataLoader
    from nni.nas.hub.pytorch import DARTS as HubDarts

    steps = args.warmup + args.steps
    gen = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(steps * args.batch_size, 3, 32, 32, generator=gen),
                                          torch.randint(0, 10, (steps * args.batch_size,), generator=gen))
    times: list[float] = []

    class StepTimer(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            sync(device)
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            sync(device)
            times.append(time.perf_counter() - self.start)

    torch.manual_seed(0)
    space = HubDarts(width=args.channels, num_cells=args.layers, dataset="cifar")
    evaluator = Classification(
        learning_rate=0.025, weight_decay=3e-4, optimizer=torch.optim.SGD, num_classes=10,
        train_dataloaders=DataLoader(data, batch_size=args.batch_size, shuffle=True),
        val_dataloaders=DataLoader(data, batch_size=args.batch_size),
        max_epochs=1, limit_train_batches=steps, num_sanity_val_steps=0, limit_val_batches=0,
        enable_progress_bar=False, enable_model_summary=False, logger=False, enable_checkpointing=False,
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, callbacks=[StepTimer()])
    darts = strategy.DARTS()
    supernet = darts.mutate_model(space)
    darts.mutate_evaluator(evaluator).evaluate(supernet)
    return times[args.warmup:]


def retrain_images_per_s(args, device: torch.device, tmp: Path) -> tuple[float, int]:
    from oneshot_darts.arch import load_arch
    from oneshot_darts.retrain import RetrainConfig, run_retrain

    cfg = RetrainConfig(data="fake", channels=args.retrain_channels, layers=args.retrain_layers,
                        batch_size=args.retrain_batch_size, max_batches=args.retrain_batches, epochs=2,
                        eval_batch_size=args.retrain_batch_size, val_fraction=0.0, device=device.type,
                        progress=False, out_dir=str(tmp), arc=str(REPO / "oneshot_darts/archs/darts_v2.json"))
    result = run_retrain(cfg, load_arch(cfg.arc))
    return result["images_per_s"], result["params_without_auxiliary"]  # the second (warm) epoch's


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", type=int, default=8, help="search width C (paper: 16)")
    p.add_argument("--layers", type=int, default=5, help="search cells (paper: 8)")
    p.add_argument("--nodes", type=int, default=4, help="nodes per cell (NNI's hub DARTS has 4)")
    p.add_argument("--batch-size", type=int, default=16, help="search batch, of each half (paper: 64)")
    p.add_argument("--steps", type=int, default=6, help="timed search steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed search steps first")
    p.add_argument("--retrain-channels", type=int, default=16, help="retrain width (paper: 36)")
    p.add_argument("--retrain-layers", type=int, default=8, help="retrain cells (paper: 20)")
    p.add_argument("--retrain-batch-size", type=int, default=32, help="retrain batch (paper: 96)")
    p.add_argument("--retrain-batches", type=int, default=6, help="batches per retrain epoch (2 epochs run)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    p.add_argument("--skip-retrain", action="store_true")
    args = p.parse_args()

    warnings.filterwarnings("ignore")
    import logging
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("nni").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    from core.train import resolve_device

    device = resolve_device(args.device)
    print(f"search: C={args.channels}, {args.layers} cells x {args.nodes} nodes, batch {args.batch_size}; "
          f"device {device.type}, torch threads {torch.get_num_threads()}")
    nni_times = time_nni_search(args, device)
    ours = time_project_search(args, device)
    n, o = statistics.median(nni_times), statistics.median(ours)
    print(f"NNI strategy.DARTS on hub DARTS: {n:.3f} s/step (median of {len(nni_times)}: "
          f"{', '.join(f'{t:.2f}' for t in nni_times)})")
    print(f"project search:                  {o:.3f} s/step (median of {len(ours)}: "
          f"{', '.join(f'{t:.2f}' for t in ours)})")
    print(f"ratio NNI / project: {n / o:.2f}x")
    if not args.skip_retrain:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            ips, params = retrain_images_per_s(args, device, Path(tmp))
        print(f"retrain DARTS-V2 C={args.retrain_channels}, {args.retrain_layers} cells ({params:,} parameters "
              f"without the auxiliary head), batch {args.retrain_batch_size}: {ips:,.1f} images/s")


if __name__ == "__main__":
    main()
