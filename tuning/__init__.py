"""keras-tuner hyperparameter searches over NiN."""
