"""SPD-style parameter decomposition of chosen linear layers of any torch module.

Each decomposed layer's weight is split into ``C`` rank-1 components ``W ≈ (V U)ᵀ`` (plus a residual
``Δ`` so that the model is reproduced exactly), trained so that on every input only a few components
are *causally important* (Bushnaq et al. 2025, "Stochastic Parameter Decomposition")::

    from gradedit.decompose import decompose, Decomposition
    dec = decompose(model, ["linear1", "linear2"], 20, x, objective="output", steps=2000, out="runs/tms")
    V, U = dec.components("linear1")            # [d_in, C], [C, d_out]
    g = dec.importance("linear1", x)            # [..., C] in [0, 1]
    dec = Decomposition.load("runs/tms", model)  # refuses another model
    labels = label_components(lm, dec, {"de": de_texts, "en": en_texts})  # statistics, contexts, lens, labels
    labels.save("runs/dec")                     # components.json; ComponentLabels.load("runs/dec")
"""

from .api import decompose
from .artifact import Decomposition
from .config import DecomposeConfig
from .labels import default_text_sets, label_components
from .labels_io import ComponentLabels
from .layers import ComponentLayer, LayerInfo

__all__ = ["decompose", "Decomposition", "DecomposeConfig", "ComponentLayer", "LayerInfo", "ComponentLabels",
           "default_text_sets", "label_components"]
