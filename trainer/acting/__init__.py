"""Acting: a trained checkpoint as a policy (rollout, eval and its scores) or a text decoder
(generate, caption), with the cached decoder they share. Reads the trainer's checkpoints and
run records; training never needs this package except to play --eval-suite."""
