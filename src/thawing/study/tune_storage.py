"""A tune's directory and its Optuna study: a new tune directory (with the config it searches with) or the one to
resume, whose config must match; the storage (a journal file in the tune directory, or an RDB URL with heartbeats);
the study created or loaded, with its sampler and pruner; the running trials of dead local processes failed."""

from __future__ import annotations

import logging
import os
import socket
import warnings
from typing import Any

from thawing.config import RunConfig, TuneConfig, dump_config, load_config
from thawing.errors import InputError
from thawing.store.atomic import write_text
from thawing.store.run_dir import RunDir

log = logging.getLogger(__name__)
DIRECTIONS = {"score": "maximize", "time": "minimize", "cost": "minimize", "retention": "maximize"}
RUN_AGAIN = ("trials", "timeout")  # tune settings a resumed study may change; the rest must stay as it started


def searched(config: RunConfig) -> dict:
    """What a study is bound to: the config, but for the tune settings a resume may change."""
    raw = config.model_dump(mode="json")
    for key in RUN_AGAIN:
        raw["tune"].pop(key, None)
    return raw


def open_tune_dir(tune: RunDir, config: RunConfig, resume: bool) -> None:
    """A new tune directory with the config it searches with, or (`resume`) the existing one, whose config must
    match this one."""
    if not resume:
        if tune.path.exists() and any(tune.path.iterdir()):
            raise InputError("a tune is here already: --resume continues it (or joins it from another process); or "
                             "choose another --tune-dir", path=tune.path)
        tune.path.mkdir(parents=True, exist_ok=True)
        write_text(tune.tune_config, dump_config(config))
        return
    if not tune.tune_config.is_file():
        raise InputError(f"no tune to resume here (no {tune.tune_config.name}); start one without --resume",
                         path=tune.path)
    changed = differences(searched(load_config(tune.tune_config)), searched(config))
    if changed:
        raise InputError(f"the study was started with another config: {', '.join(changed)} differ (only "
                         f"tune.{' and tune.'.join(RUN_AGAIN)} may change on --resume)", path=tune.tune_config)


def differences(before: dict, now: dict, prefix: str = "", depth: int = 2) -> list[str]:
    """The dotted keys (to `depth` levels) whose values differ."""
    out = []
    for key in sorted(before.keys() | now.keys()):
        a, b = before.get(key), now.get(key)
        if a == b:
            continue
        if depth > 1 and isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.", depth - 1)
        else:
            out.append(f"{prefix}{key}")
    return out


def open_study(optuna: Any, tune: RunDir, config: RunConfig, settings: TuneConfig, url: str | None, name: str,
               resume: bool, pruner: Any) -> Any:
    """The Optuna study: created, or loaded (`resume`) with the running trials of dead local processes failed."""
    storage = open_storage(optuna, tune, url, resume)
    single = len(settings.objectives) == 1
    # The first process seeds the sampler (a reproducible start); others joining draw their own, or they would all
    # try the same plans.
    sampler = optuna.samplers.TPESampler(seed=None if resume else config.train.seed,
                                         n_startup_trials=max(1, settings.startup_trials))
    pruner = (pruner or make_pruner(optuna, settings)) if single else optuna.pruners.NopPruner()
    if resume:
        try:
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        except KeyError:
            raise InputError(f"no study named '{name}' in the storage to resume", path=tune.path) from None
        if study.user_attrs.get("objectives") != settings.objectives:
            raise InputError(f"the study's objectives are {study.user_attrs.get('objectives')}, not "
                             f"{settings.objectives}", path=tune.path)
        fail_dead_trials(optuna, study, storage)
        return study
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                    directions=[DIRECTIONS[o] for o in settings.objectives])
    except optuna.exceptions.DuplicatedStudyError:
        raise InputError(f"the storage holds a study named '{name}' already: --resume joins it, or give "
                         "--study-name") from None
    study.set_user_attr("objectives", settings.objectives)
    return study


def open_storage(optuna: Any, tune: RunDir, url: str | None, resume: bool) -> Any:
    """A journal file in the tune directory, or the RDB `url` (with heartbeats: a killed worker's trials fail)."""
    if url is None:
        if resume and not tune.tune_journal.is_file():
            raise InputError(f"no study to resume here (no {tune.tune_journal.name}); was it started with --storage?",
                             path=tune.path)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(tune.tune_journal)))
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are, since 2.9
            return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        raise InputError(f"--storage {url}: cannot open the study's database: {exc}") from None


def make_pruner(optuna: Any, settings: TuneConfig) -> Any:
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials)
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def fail_dead_trials(optuna: Any, study: Any, storage: Any) -> None:
    """Mark failed the running trials whose process, on this machine, is gone (a killed `thawing tune`): they
    would stay RUNNING forever in a journal file (a database's heartbeats fail its own)."""
    here = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        who = trial.user_attrs.get("owner") or {}
        if who.get("host") == here and not _alive(who.get("pid")):
            trial_id = storage.get_trial_id_from_study_id_trial_number(
                storage.get_study_id_from_name(study.study_name), trial.number)
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
            log.warning("trial %d was running in process %s, which is gone: marked failed", trial.number, who["pid"])


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
