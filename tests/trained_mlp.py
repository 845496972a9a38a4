"""A small real model for the tracing tests and the trace benchmark: an MLP trained with NumPy on
scikit-learn's handwritten digits (shipped with the package; nothing is downloaded).

64 inputs -> 128 -> 128 -> 10, ReLU, softmax; trained with Adam. Weights are named like a
PyTorch state dict (fc1.weight is out × in), so the head (`head.weight`) and biases are the
tensors custody's marks leave alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HIDDEN = 128


@dataclass
class Digits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def digits() -> Digits:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(7).permutation(len(x))
    x, y = x[order], y[order]
    cut = len(x) // 3  # two thirds held out (1,198 digits): accuracy moves in steps of 0.08 points
    return Digits(x[:cut], y[:cut], x[cut:], y[cut:])


def init(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def layer(out: int, inp: int) -> np.ndarray:
        return (rng.standard_normal((out, inp)) * np.sqrt(2.0 / inp)).astype(np.float32)

    return {"fc1.weight": layer(HIDDEN, 64), "fc1.bias": np.zeros(HIDDEN, np.float32),
            "fc2.weight": layer(HIDDEN, HIDDEN), "fc2.bias": np.zeros(HIDDEN, np.float32),
            "head.weight": layer(10, HIDDEN), "head.bias": np.zeros(10, np.float32)}


def forward(w: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, tuple]:
    h1 = np.maximum(x @ w["fc1.weight"].T + w["fc1.bias"], 0)
    h2 = np.maximum(h1 @ w["fc2.weight"].T + w["fc2.bias"], 0)
    return h2 @ w["head.weight"].T + w["head.bias"], (x, h1, h2)


def accuracy(w: dict[str, np.ndarray], data: Digits) -> float:
    logits, _ = forward({k: np.asarray(v, np.float32) for k, v in w.items()}, data.x_test)
    return float((logits.argmax(axis=1) == data.y_test).mean() * 100)


def train(w: dict[str, np.ndarray], data: Digits, epochs: int, seed: int, lr: float = 1e-3) -> dict[str, np.ndarray]:
    """`epochs` of Adam on the training half, from `w` (a copy is trained)."""
    w = {k: np.array(v, dtype=np.float32) for k, v in w.items()}
    m = {k: np.zeros_like(v) for k, v in w.items()}
    v2 = {k: np.zeros_like(v) for k, v in w.items()}
    rng = np.random.default_rng(seed)
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(data.x_train))
        for start in range(0, len(order), 32):
            idx = order[start:start + 32]
            x, y = data.x_train[idx], data.y_train[idx]
            logits, (a0, h1, h2) = forward(w, x)
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(y)), y] -= 1
            g3 = p / len(y)
            grads = {"head.weight": g3.T @ h2, "head.bias": g3.sum(0)}
            g2 = (g3 @ w["head.weight"]) * (h2 > 0)
            grads.update({"fc2.weight": g2.T @ h1, "fc2.bias": g2.sum(0)})
            g1 = (g2 @ w["fc2.weight"]) * (h1 > 0)
            grads.update({"fc1.weight": g1.T @ a0, "fc1.bias": g1.sum(0)})
            step += 1
            for k, g in grads.items():
                m[k] = 0.9 * m[k] + 0.1 * g
                v2[k] = 0.999 * v2[k] + 0.001 * g * g
                mh, vh = m[k] / (1 - 0.9 ** step), v2[k] / (1 - 0.999 ** step)
                w[k] -= (lr * mh / (np.sqrt(vh) + 1e-8)).astype(np.float32)
    return w


def trained(seed: int, data: Digits, epochs: int = 40) -> dict[str, np.ndarray]:
    return train(init(seed), data, epochs, seed)


def attacks() -> dict:
    """What a leaker does to a copy, tensor by tensor: casts, quantizations, pruning, noise."""
    import ml_dtypes
    from gguf import GGMLQuantizationType, quants

    from custody.data.derive.transforms import dequantize_int8, quantize_int8

    def q(kind: str):  # noqa: ANN202
        t = GGMLQuantizationType[kind]
        return lambda a: quants.dequantize(quants.quantize(a, t), t) if a.ndim == 2 and a.shape[1] % 32 == 0 else a

    def prune(a: np.ndarray) -> np.ndarray:
        if a.ndim < 2:
            return a
        out = a.copy()
        out[np.abs(out) <= np.quantile(np.abs(out), 0.3)] = 0
        return out

    return {"fp16": lambda a: a.astype(np.float16).astype(np.float32),
            "bf16": lambda a: a.astype(ml_dtypes.bfloat16).astype(np.float32),
            "int8": lambda a: dequantize_int8(*quantize_int8(a)) if a.ndim == 2 else a,
            "q8_0": q("Q8_0"), "q4_0": q("Q4_0"), "prune-30%": prune,
            "noise-5%": lambda a: a + np.random.default_rng(3).normal(0, 0.05 * a.std(), a.shape).astype(np.float32)}
