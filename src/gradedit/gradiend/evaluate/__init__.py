"""Evaluation after training: the encoder (is the feature separated?) and the decoder sweep."""

from .decoder import evaluate_decoder
from .results import DecoderResults, Selection
from .selectors import NoAdmissiblePoint, lms_constraint, metric_times_lms, perplexity_constraint

__all__ = ["DecoderResults", "NoAdmissiblePoint", "Selection", "evaluate_decoder", "lms_constraint", "metric_times_lms",
           "perplexity_constraint"]
