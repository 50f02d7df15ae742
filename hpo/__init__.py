"""HPO stage: NNI experiments over learning rate x optimizer x model (trial, configs, reader, retrain)."""
