"""Parameter decomposition of a toy model of superposition: five sparse features in two hidden dims.

    python examples/decompose_tms.py [--steps 1000] [--seed 1]

The toy is built by hand (no training): ``relu(W2 W1 x + b)`` with the five features on a pentagon,
so each layer holds five rank-1 mechanisms (``w_k e_kᵀ`` in ``linear1``, ``e_k w_kᵀ`` in
``linear2``) in a rank-2 weight. The decomposition (``objective="output"``, SPD's) should find one
component per mechanism; the SVD has only two components per layer and cannot. Prints, per layer,
the best |cosine| of each true mechanism with a learned component and with an SVD component, and
which components fire on each one-hot input.
"""

import argparse
import math

import torch
from torch import nn

from gradedit.decompose import decompose


class TMS(nn.Module):
    def __init__(self, n: int = 5, bias: float = -0.5) -> None:
        super().__init__()
        self.linear1 = nn.Linear(n, 2, bias=False)
        self.linear2 = nn.Linear(2, n)
        ang = torch.arange(n) * 2 * math.pi / n
        W = torch.stack([ang.cos(), ang.sin()])
        with torch.no_grad():
            self.linear1.weight.copy_(W)
            self.linear2.weight.copy_(W.T)
            self.linear2.bias.fill_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear2(self.linear1(x)))


def best_cosines(weights: torch.Tensor, mechanisms: torch.Tensor) -> torch.Tensor:
    """Best |cos| per mechanism; ``weights [K, out, in]``, ``mechanisms [5, out, in]``."""
    a = weights.reshape(weights.shape[0], -1)
    b = mechanisms.reshape(mechanisms.shape[0], -1)
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = b / b.norm(dim=1, keepdim=True)
    return (a @ b.T).abs().max(0).values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = TMS()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20000, 5, generator=g) * (torch.rand(20000, 5, generator=g) < 0.05)
    dec = decompose(model, ["linear1", "linear2"], 20, x, objective="output", steps=args.steps, batch_size=512,
                    seed=args.seed, lr=0.01, importance_coeff=0.3, init="data")
    W = model.linear1.weight.detach()
    eye = torch.eye(5)
    for layer in ("linear1", "linear2"):
        mech = torch.stack([torch.outer(W[:, k], eye[k]) if layer == "linear1" else torch.outer(eye[k], W[:, k])
                            for k in range(5)])
        V, U = dec.components(layer)
        learned = torch.einsum("co,ic->coi", U, V)
        Ws = getattr(model, layer).weight.detach()
        u, s, vh = torch.linalg.svd(Ws, full_matrices=False)
        svd = torch.stack([s[i] * torch.outer(u[:, i], vh[i]) for i in range(s.numel())])
        ours, theirs = best_cosines(learned, mech), best_cosines(svd, mech)
        print(f"{layer}: best |cos| per mechanism  decomposition {[round(float(v), 3) for v in ours]} "
              f"(mean {float(ours.mean()):.3f})   SVD {[round(float(v), 3) for v in theirs]} "
              f"(mean {float(theirs.mean()):.3f})")
        for k in range(5):
            xin = eye[k] if layer == "linear1" else model.linear1(eye[k]).detach()
            g_k = dec.importance(layer, xin)
            print(f"   feature {k}: components with importance > 0.5: {(g_k > 0.5).nonzero().flatten().tolist()}")
    print("alive per layer:", dec.metrics["alive"], " mean L0 per input:", round(dec.metrics["mean_l0_per_token"], 3))


if __name__ == "__main__":
    main()
