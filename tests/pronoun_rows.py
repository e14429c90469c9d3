"""Hand-made he/she rows for tiny-model tests (shared by the trainer, decoder, encoder and CLI tests)."""

import itertools

SUBJECTS = ["The doctor", "My friend", "The teacher", "The nurse", "The man", "A woman", "The child", "Our boss"]
VERBS = ["said that", "thinks that", "knows that", "wrote that", "believes that"]


def pronoun_records(subjects=SUBJECTS, verbs=VERBS, rest="would be late."):
    """One masc (" he" -> " she") and one fem (" she" -> " he") row per subject x verb."""
    recs = []
    for s, v in itertools.product(subjects, verbs):
        for f, a, fc, ac in [(" he", " she", "masc", "fem"), (" she", " he", "fem", "masc")]:
            recs.append({"text": f"{s} {v} [MASK] {rest}", "factual": f, "alternative": a,
                         "factual_class": fc, "alternative_class": ac})
    return recs


THREE_CLASS_TOKENS = {"masc": " he", "fem": " she", "plur": " they"}


def three_class_records(subjects=SUBJECTS, verbs=VERBS):
    """Every ordered pair of he / she / they per subject x verb (6 rows each)."""
    recs = []
    for s, v in itertools.product(subjects, verbs):
        for fc, ac in itertools.permutations(THREE_CLASS_TOKENS, 2):
            recs.append({"text": f"{s} {v} [MASK] would be late.", "factual": THREE_CLASS_TOKENS[fc],
                         "alternative": THREE_CLASS_TOKENS[ac], "factual_class": fc, "alternative_class": ac})
    return recs
