"""The Lightning side of row 6: the digits CNN trained the way a Lightning user writes it —
the network as a hand-written module (tests/twins.py), the bundled digits, AdamW, and
`lightning.Trainer` with its defaults (no progress bar, as `yamlnet train` off a terminal).

    python -m benchmarks.lightning_script --max-steps 1
"""

from __future__ import annotations

import argparse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=1)
    args = parser.parse_args(argv)

    import lightning as L
    import torch
    from sklearn.datasets import load_digits

    from tests.twins import DigitsCNN

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64,
                                         shuffle=True)  # fmt: skip
    trainer = L.Trainer(max_steps=args.max_steps, accelerator="cpu", devices=1,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    adamw = lambda params: torch.optim.AdamW(params, lr=0.002, weight_decay=0.01)  # noqa: E731
    trainer.fit(classifier(DigitsCNN(), adamw), loader)
    return 0


def classifier(model, optimizer):
    """A LightningModule training `model` with cross-entropy and `optimizer(params)`,
    logging the loss each step (the Lightning side of rows 5 and 6)."""
    import lightning as L
    import torch

    class Classifier(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model, self.loss_fn = model, torch.nn.CrossEntropyLoss()

        def training_step(self, batch, _index):
            x, y = batch
            loss = self.loss_fn(self.model(x), y)
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self):
            return optimizer(self.parameters())

    return Classifier()


if __name__ == "__main__":
    raise SystemExit(main())
