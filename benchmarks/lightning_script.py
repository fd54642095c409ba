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

    class Digits(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model, self.loss_fn = DigitsCNN(), torch.nn.CrossEntropyLoss()

        def training_step(self, batch, _index):
            x, y = batch
            loss = self.loss_fn(self.model(x), y)
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=0.002, weight_decay=0.01)

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64,
                                         shuffle=True)  # fmt: skip
    trainer = L.Trainer(max_steps=args.max_steps, accelerator="cpu", devices=1,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(Digits(), loader)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
