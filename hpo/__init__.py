"""HPO stage: NNI experiments over learning rate x optimizer x model (trial, configs, reader, retrain)."""

#: The searched parameters; every trial repeats them in its final result (see experiments.reader).
PARAM_KEYS = ("model", "optimizer", "lr")
#: Hyperband's resource per trial, as NNI names it; here: training epochs.
BUDGET_KEY = "TRIAL_BUDGET"
