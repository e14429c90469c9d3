"""GRADIEND: factual/counterfactual gradients → an encoder–decoder with one latent feature neuron →
encoder and decoder evaluation → a rewrite of the base model (``ModelWithGradiend``, a ``WeightEdit``)."""

from __future__ import annotations

from .evaluate import DecoderResults, NoAdmissiblePoint, Selection, evaluate_decoder
from .feature_model import FeatureModel
from .gradients import GradientEngine
from .model import ModelWithGradiend
from .suite import Suite
from .train import TrainConfig, Trainer

__all__ = ["DecoderResults", "FeatureModel", "GradientEngine", "ModelWithGradiend", "NoAdmissiblePoint",
           "Selection", "Suite", "TrainConfig", "Trainer", "evaluate_decoder"]
