"""Placeholder demo until the end-to-end demo lands: tokenise built-in values and show a row."""

import numpy as np

from tokenizer_kit.layout import VocabLayout
from tokenizer_kit.sequence import EpisodeSpec, FieldSpec, build_episode

layout = VocabLayout(text_vocab_size=32000)
spec = EpisodeSpec((FieldSpec("state", "continuous", (4,)),), (FieldSpec("action", "discrete", (1,)),))
row = build_episode({"state": np.array([[0.0, 0.5, -10.0, 256.0]])}, {"action": np.array([[1]])}, spec, layout)
print("tokens   ", row.tokens.tolist())
print("loss_mask", row.loss_mask.tolist())
print("local_pos", row.local_pos.tolist())
