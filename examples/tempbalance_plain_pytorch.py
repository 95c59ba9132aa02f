"""TempBalance in a plain PyTorch training: the shared loop + a callback that steps the scheduler.

Trains a small ResNet from scratch on scikit-learn's digits (a 20% subset) with SGD + cosine schedule, with
per-layer learning rates from each layer's power-law alpha, recomputed every 40 optimizer steps. Prints the
test accuracy and where the time went, and writes the per-layer alpha / learning-rate trajectories as a PNG.

    python examples/tempbalance_plain_pytorch.py [--out tempbalance_trajectories.png]
"""

from __future__ import annotations

import argparse
import logging

import torch
from torch.utils.data import DataLoader, TensorDataset

from htsr.data.digits import digits_split
from htsr.models.vision import make_vision_model
from htsr.tempbalance import TempBalance, TempBalanceCallback
from htsr.tempbalance.plots import plot_trajectories
from htsr.training import evaluate, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="tempbalance_trajectories.png")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    torch.set_num_threads(1)

    x, y, x_test, y_test = digits_split(0.2, seed=args.seed)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(args.seed))
    model = make_vision_model("resnet", seed=args.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    total_steps = args.epochs * len(loader)
    # TempBalance splits the optimizer's groups by layer name, then builds the base (global) schedule on them;
    # each layer's rate = cosine rate x its multiplier from alpha (linear map into [0.5, 1.5]).
    tb = TempBalance(model, optimizer, interval=40,
                     base_scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps))
    result = train(model, loader, optimizer, epochs=args.epochs, callbacks=[TempBalanceCallback(tb, every="step")],
                   eval_data=[(x_test, y_test)], eval_every=5)
    print(result.history[["epoch", "train_loss", "eval_accuracy", "tb_mean_value", "tb_min_mult", "tb_max_mult"]]
          .dropna().to_string(index=False))
    print(f"test accuracy {evaluate(model, [(x_test, y_test)])['accuracy']:.4f}; "
          f"TempBalance: {tb.n_updates} updates, {tb.metric_time_s:.2f} s of {result.state.train_time_s:.1f} s")
    print("not tuned:", tb.excluded_)
    print(f"wrote {plot_trajectories(tb.history, args.out, title='digits ResNet')}")


if __name__ == "__main__":
    main()
