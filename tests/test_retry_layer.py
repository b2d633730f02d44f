"""One retry layer for a trial that is a Ray Train run inside Ray Tune (a multi-worker retrain
trial, a sweep's search): Tune retries it --max-trial-failures times, the run itself never, so
a trial is tried at most 1 + that many times (two layers gave (1 + k)^2). Built, not run: the
configs Ray gets, read back from the objects it is handed."""
import argparse
import types

from goldnas_ray.cli import add_retrain_flags
from goldnas_ray.files.store import location
from goldnas_ray.orchestration.retrain_driver import _tuner
from goldnas_ray.orchestration.retrain_trial import RETRIES_INSIDE_A_TRIAL, RetrainCallback, _train_run
from goldnas_ray.retrain.plan import Resources, TrialSpec


def test_a_multi_worker_trial_is_retried_by_tune_alone_as_often_as_the_flag_says(tmp_path):
    args = argparse.ArgumentParser()
    add_retrain_flags(args)
    flag = next(a for a in args._actions if "--max-trial-failures" in a.option_strings)
    # the help says what is retried, by whom, how often, and what one failure is
    for words in ("Ray Tune retries a failed trial", "at most 3 attempts", "One failure: any error that ends an attempt",
                  "any worker of its --workers-per-trial run dies", "does not restart its workers itself"):
        assert words in flag.help, words
    max_failures = args.parse_args(["--max-trial-failures", "5"]).max_trial_failures
    spec = TrialSpec("a-s0", "a", 0, {}, {}, {}, location(tmp_path).uri, workers=2)
    train = _train_run(spec, callbacks=[])  # the trial's Ray Train run, as the trial builds it
    tuner = _tuner(location(tmp_path), types.SimpleNamespace(trials=[spec.key]), {spec.key: spec},
                   Resources(2, 1, 0), 1, max_failures, False, RetrainCallback(None, {}, 1))
    assert RETRIES_INSIDE_A_TRIAL == train.run_config.failure_config.max_failures == 0
    assert tuner._local_tuner.get_run_config().failure_config.max_failures == 5
