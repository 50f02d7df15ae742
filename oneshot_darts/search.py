"""DARTS search: ``python oneshot_darts/search.py [--config configs/darts_search.yml]``.

One search of :mod:`oneshot_darts.search_trainer` (NNI 3.0's differentiable supernet of
:class:`~oneshot_darts.space.DartsSpace`, trained by :class:`~oneshot_darts.search_trainer.DartsSearch`,
the core engine with the bilevel step) in a new run folder, or continued from its checkpoint
(``--resume``). The run folder gets ``final_arch.json`` (``retrain.py --arc`` reads it),
``arch_weights.json``, ``metrics.jsonl``, ``train.log``, ``config.yaml``, ``checkpoint.pt`` and
``result.json`` (what each holds: :mod:`oneshot_darts.search_trainer`).

Under nnictl (``--nni``, ``config.yml``) every epoch's intermediate result is ``{"default": validation
accuracy, "normal_param_free": n, "normal_skip_connect": n}``, so the web UI shows the collapse counts.

``--seeds S1 S2 ... --select-epochs E`` runs the paper's protocol instead, as
``python oneshot_darts/protocol.py`` does (:mod:`oneshot_darts.protocol`).
"""
from __future__ import annotations

from typing import Any, Sequence

from core.config import check_resume_only, config_from_args
from core.errors import UserError, cli_main
from core.output import print_result
from core.run_training import config_from_checkpoint
from experiments.nni_trial import NniTrial, final_metrics
from oneshot_darts import protocol
from oneshot_darts.command_line import START_HINT, build_parser
from oneshot_darts.search_trainer import COLLAPSE_KEYS, SearchConfig, run_search


@cli_main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_parser(SearchConfig, "python oneshot_darts/search.py", __doc__.splitlines()[0])
    protocol.add_protocol_arguments(parser, required=False)
    args = parser.parse_args(argv)
    if args.resume:
        check_resume_only(SearchConfig, args, extra=("nni", "seeds", "select_epochs", "select_config"))
        cfg, _ = config_from_checkpoint(SearchConfig, args.resume)
        return _finish(run_search(cfg, resume=args.resume))
    if args.seeds is None:
        for name in ("select_epochs", "select_config"):
            if getattr(args, name) is not None:
                raise UserError(f"--{name.replace('_', '-')}: only with --seeds (the paper's protocol)")
    else:
        if args.nni:
            raise UserError("--nni: not allowed with --seeds; the protocol runs its searches and retrains itself "
                            "(run it as a plain command)")
        return _finish(protocol.run_from_args(args))
    cfg = config_from_args(SearchConfig, args)
    if args.nni:
        trial = NniTrial.required(START_HINT)
        cfg = config_from_args(SearchConfig, args, overrides=trial.params)
        result = run_search(cfg, run_dir=trial.run_dir, on_epoch=trial.epoch_reporter("val_acc", COLLAPSE_KEYS))
        trial.send_final(final_metrics(result, "val_acc"))
        return _finish(result)
    return _finish(run_search(cfg))


def _finish(result: dict[str, Any]) -> dict[str, Any]:
    print_result(result)
    return result


if __name__ == "__main__":
    main()
