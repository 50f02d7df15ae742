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
"""
from __future__ import annotations

from typing import Any

import nni
from nni.algorithms.hpo.hyperband_advisor import Hyperband
from nni.algorithms.hpo.tpe_tuner import TpeTuner


class FixedTpe(TpeTuner):
    """NNI's TPE tuner (same class arguments) that survives a trial ending under another's id."""

    def receive_trial_result(self, parameter_id: Any, parameters: Any, value: Any, **kwargs: Any) -> None:
        if parameter_id not in self._running_params and parameter_id in self._params:
            self._running_params[parameter_id] = self._params[parameter_id]
        super().receive_trial_result(parameter_id, parameters, value, **kwargs)


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
