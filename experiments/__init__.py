"""The NNI and experiment layer, on top of the training engine (core/): an NNI trial's side (parameters in,
results out, TensorBoard), nnictl configs checked before they start, the experiment reader and its one
ranking rule, the retrains of an experiment's best K and an HPO winner handed on to a later stage."""
