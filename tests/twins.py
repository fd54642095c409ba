"""Hand-written PyTorch twins of the specs in specs/, for oracle tests.

Each class is written the ordinary way (``nn.Module`` subclasses with ``__init__`` and
``forward``), independently of yamlnet, with attribute names chosen so that its
``state_dict()`` keys equal those of the compiled spec.  Constructor keyword arguments
mirror the spec's ``vars:`` (same names, same defaults), so a twin built with
``Twin(**overrides)`` matches ``yamlnet.compile(spec, **overrides)``.

Nothing here imports yamlnet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLP", "LeNet5", "DigitsCNN", "LSTMClassifier", "TinyViT", "GPTTwin", "TWINS"]


# ---- specs/mlp.yaml ------------------------------------------------------------------


class Dense(nn.Module):
    """Linear -> ReLU -> Dropout (the spec's `dense` block)."""

    def __init__(self, in_features: int, width: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(in_features, width)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.act(self.fc(x)))


class MLP(nn.Module):
    def __init__(self, features=64, hidden=128, classes=10, dropout=0.1):
        super().__init__()
        layers = []
        width_in = features
        for i in range(3):
            width = hidden // (2**i)  # 128, 64, 32
            layers.append(Dense(width_in, width, dropout))
            width_in = width
        self.hidden = nn.ModuleList(layers)
        self.head = nn.Linear(width_in, classes)

    def forward(self, x):
        for layer in self.hidden:
            x = layer(x)
        return self.head(x)


# ---- specs/lenet5.yaml ---------------------------------------------------------------


class LeNet5(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, kernel_size=5, padding=2)
        self.act1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.act2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.act3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.act4 = nn.ReLU()
        self.fc3 = nn.Linear(84, classes)

    def forward(self, image):
        x = self.pool1(self.act1(self.conv1(image)))
        x = self.pool2(self.act2(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = self.act3(self.fc1(x))
        x = self.act4(self.fc2(x))
        return self.fc3(x)


# ---- specs/digits_cnn.yaml -----------------------------------------------------------


class ConvBnRelu(nn.Module):
    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class DigitsCNN(nn.Module):
    def __init__(self, width=32, classes=10, dropout=0.25):
        super().__init__()
        self.features = nn.ModuleList([ConvBnRelu(1, width), ConvBnRelu(width, width * 2)])
        self.pool = nn.MaxPool2d(2)
        self.drop1 = nn.Dropout(dropout)
        self.fc1 = nn.Linear(width * 2 * 4 * 4, 128)
        self.act = nn.ReLU()
        self.drop2 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(128, classes)

    def forward(self, image):
        x = image
        for block in self.features:
            x = block(x)
        x = self.drop1(self.pool(x))
        x = torch.flatten(x, start_dim=1)
        x = self.drop2(self.act(self.fc1(x)))
        return self.fc2(x)


# ---- specs/lstm_classifier.yaml ------------------------------------------------------


class LSTMClassifier(nn.Module):
    def __init__(self, vocab=1000, embed=64, hidden=128, layers=2, classes=4):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, tokens):
        _output, (h_n, _c_n) = self.lstm(self.embedding(tokens))
        return self.head(h_n[-1])  # the last layer's final hidden state


# ---- specs/tiny_vit.yaml -------------------------------------------------------------


class EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim * mlp_ratio),
            nn.GELU(),
            nn.Linear(dim * mlp_ratio, dim),
        )

    def forward(self, x):
        h = self.ln_1(x)
        x = x + self.attention(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class TinyViT(nn.Module):
    def __init__(self, image=32, patch=4, dim=64, heads=4, depth=2, mlp_ratio=4, classes=10):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.empty(1, (image // patch) ** 2 + 1, dim))
        nn.init.trunc_normal_(self.pos_embedding, std=0.02)
        self.layers = nn.ModuleList([EncoderLayer(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, image):
        x = self.patch_embed(image).flatten(2).transpose(1, 2)  # [N, patches, dim]
        cls = self.class_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embedding
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        return self.head(x[:, 0])


# ---- specs/zoo/gpt.yaml -------------------------------------------------------------


class GPTTwin(nn.Module):
    """specs/zoo/gpt.yaml: GPT-2 style, written as one would in PyTorch (nanoGPT's layout:
    dropout after the embeddings, the attention projection and the MLP)."""

    def __init__(self, vocab=512, context=128, dim=128, heads=4, layers=4, dropout=0.0):
        super().__init__()
        self.heads = heads
        self.tok_emb = nn.Embedding(vocab, dim)
        self.pos_emb = nn.Embedding(context, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            block = nn.Module()
            block.ln_1, block.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            block.attn = nn.Module()
            block.attn.c_attn, block.attn.c_proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            block.attn.drop = nn.Dropout(dropout)
            block.mlp = nn.Module()
            block.mlp.c_fc, block.mlp.c_proj = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
            block.mlp.gelu, block.mlp.drop = nn.GELU(approximate="tanh"), nn.Dropout(dropout)
            self.blocks.append(block)
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.tok_emb.weight  # tied

    def forward(self, tokens):
        n, t = tokens.shape
        x = self.drop(self.tok_emb(tokens) + self.pos_emb(torch.arange(t, device=tokens.device)))
        for b in self.blocks:
            q, k, v = b.attn.c_attn(b.ln_1(x)).split(x.shape[-1], dim=2)
            q, k, v = (z.view(n, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(n, t, -1)
            x = x + b.attn.drop(b.attn.c_proj(a))
            x = x + b.mlp.drop(b.mlp.c_proj(b.mlp.gelu(b.mlp.c_fc(b.ln_2(x)))))
        return self.head(self.ln_f(x))


# spec file name -> (twin class, function making a random input for a batch size)
TWINS = {
    "mlp.yaml": (MLP, lambda n, **v: torch.randn(n, v.get("features", 64))),
    "lenet5.yaml": (LeNet5, lambda n, **v: torch.randn(n, 1, 28, 28)),
    "digits_cnn.yaml": (DigitsCNN, lambda n, **v: torch.randn(n, 1, 8, 8)),
    "lstm_classifier.yaml": (
        LSTMClassifier,
        lambda n, **v: torch.randint(0, v.get("vocab", 1000), (n, 7), dtype=torch.int64),
    ),
    "tiny_vit.yaml": (
        TinyViT,
        lambda n, **v: torch.randn(n, 3, v.get("image", 32), v.get("image", 32)),
    ),
}
