"""The smallest fixes that make NNI 3.0's TPE tuner and Hyperband advisor finish their experiments.

The nnictl configs load them as custom algorithms, e.g.::

    tuner:
      codeDirectory: ../hpo
      className: nni_fixes.FixedTpe
      classArgs: {optimize_mode: maximize}

Both defects come from one behaviour of NNI 3.0's local training service: it hands queued
parameter sets to trials in the order the trials *ask* for them, not the order the trials were
created, so the parameter id NNI records for a trial (and shows in the web UI and in
``nnictl experiment export``) can belong to another trial that started at the same moment (NNI
issue #5726). A trial's metrics carry the id it really ran with.

* TPE: when a trial ends, NNI tells the tuner the *recorded* id, and TPE forgets that id's
  pending parameters; when the trial that really ran them reports its final result later, TPE's
  ``receive_trial_result`` raises ``KeyError``, the dispatcher dies and the experiment hangs in
  RUNNING (NNI issue #5689). Any trial that ends early (a bad parameter, an early stop by the
  assessor) while another runs can trigger it. :class:`FixedTpe` takes the parameters from its
  full record instead.
* Hyperband: its parameter ids are strings such as ``'0-2_0_5'`` (bracket, round, config), but
  ``Recoverable.is_created_in_previous_exp`` compares them with an int, so the dispatcher dies
  with ``TypeError: '<=' not supported between instances of 'str' and 'int'`` at the first metric
  and the experiment hangs (NNI issue #5263); recovery is not implemented for Hyperband anyway, so
  a string id is never "from a previous experiment". And Hyperband counts the finished trials of
  each bracket and round by the recorded id, so it could promote a round before its results are
  in; :class:`FixedHyperband` books a trial's end under the id its metrics carried.

And one setting NNI 3.0 lost: with an assessor, the tuner hears only of trials that ran to the end.
NNI's dispatcher hands an early-stopped trial's last intermediate result to the tuner as its final
result only when ``NNI_INCLUDE_INTERMEDIATE_RESULTS`` is ``true`` in the dispatcher's environment
(``nni/runtime/msg_dispatcher.py``, ``_earlystop_notify_tuner``), and NNI 3.0's manager starts the
dispatcher with that variable set from the v1 config field ``includeIntermediateResults``, which
the v2 config format no longer has: it is always ``false``, whatever the user's shell says. TPE
then learns only from the survivors and keeps proposing near the configurations the assessor
stopped. :class:`FixedTpe` (class argument ``include_intermediate_results``, default true) turns
the dispatcher's switch on from inside the dispatcher process, where NNI loads the tuner, and
counts each parameter set's result once (a trial stopped at its last epoch may also report its
own final result). Every result the tuner receives is logged to the experiment's
``log/dispatcher.log`` as one ``tuner received: {json}`` line (:data:`RECEIVED_TAG`).
"""
from __future__ import annotations

import json
import logging
from typing import Any

import nni
from nni.algorithms.hpo.hyperband_advisor import Hyperband
from nni.algorithms.hpo.tpe_tuner import TpeTuner


_logger = logging.getLogger(__name__)   # NNI's dispatcher logs the root logger to log/dispatcher.log

#: How :class:`FixedTpe` logs each result it learns from (then a JSON object: ``parameter_id``,
#: ``trial_job_id``, ``value``, ``early_stopped``): what ``tests/test_hpo_nni.py`` reads back.
RECEIVED_TAG = "tuner received: "


def include_early_stopped_results() -> None:
    """Make NNI's dispatcher in this process hand an early-stopped trial's last intermediate result
    to the tuner as its final result (``NNI_INCLUDE_INTERMEDIATE_RESULTS=true``).

    The dispatcher reads the variable through a tuple of environment values built when ``nni``
    was imported, so setting ``os.environ`` here would come too late; this replaces that tuple.
    Call it while the tuner is built: NNI imports the dispatcher before it loads the tuner and
    consults the value at every early stop.
    """
    from nni.runtime import env_vars, msg_dispatcher

    switched = env_vars.dispatcher_env_vars._replace(NNI_INCLUDE_INTERMEDIATE_RESULTS="true")
    env_vars.dispatcher_env_vars = msg_dispatcher.dispatcher_env_vars = switched


class FixedTpe(TpeTuner):
    """NNI's TPE tuner (same class arguments) that survives a trial ending under another's id and
    learns from early-stopped trials.

    ``include_intermediate_results`` (default true): an early-stopped trial's last intermediate
    result reaches the tuner as that trial's final result (see the module docstring).
    """

    def __init__(self, optimize_mode: str = "minimize", seed: int | None = None,
                 tpe_args: dict[str, Any] | None = None, include_intermediate_results: bool = True):
        super().__init__(optimize_mode=optimize_mode, seed=seed, tpe_args=tpe_args)
        self.include_intermediate_results = bool(include_intermediate_results)
        self._received: set[Any] = set()
        if self.include_intermediate_results:
            include_early_stopped_results()
        _logger.info("early-stopped trials' last intermediate results %s the tuner",
                     "go to" if self.include_intermediate_results else "do not go to")

    def receive_trial_result(self, parameter_id: Any, parameters: Any, value: Any, **kwargs: Any) -> None:
        # A trial's own final result is a dict here; the dispatcher passes an early-stopped trial's
        # last intermediate result, which is a plain number.
        early = not isinstance(value, dict)
        if parameter_id in self._received:
            _logger.info("parameter set %s already has a result; %s not counted twice", parameter_id,
                         "the early stop's" if early else "its trial's final result")
            return
        if parameter_id not in self._running_params and parameter_id in self._params:
            self._running_params[parameter_id] = self._params[parameter_id]
        super().receive_trial_result(parameter_id, parameters, value, **kwargs)
        self._received.add(parameter_id)
        _logger.info(RECEIVED_TAG + json.dumps({
            "parameter_id": parameter_id, "trial_job_id": kwargs.get("trial_job_id"),
            "value": value.get("default") if isinstance(value, dict) else value, "early_stopped": early}))


class FixedHyperband(Hyperband):
    """NNI's Hyperband advisor (same class arguments: ``optimize_mode``, ``R``, ``eta``,
    ``exec_mode``) with string parameter ids accepted and trial ends booked by reported id."""

    def is_created_in_previous_exp(self, param_id: Any) -> bool:
        if not isinstance(param_id, int):
            return False
        return super().is_created_in_previous_exp(param_id)

    def handle_trial_end(self, data: dict[str, Any]) -> None:
        reported = self.job_id_para_id_map.get(data.get("trial_job_id"))
        if reported is not None:
            hyper_params = nni.load(data["hyper_params"])
            if hyper_params.get("parameter_id") != reported:
                hyper_params["parameter_id"] = reported
                data = {**data, "hyper_params": nni.dump(hyper_params)}
        super().handle_trial_end(data)
