"""Training: dataset from accepted/, features, head, evaluation, registry writes and promotion."""
