"""Where jobs run. The driver hands an executor picklable calls and gets outcomes back; the
stages never know which executor ran them. The interface is `base.Executor`.

Kinds (`EXECUTORS`, chosen by the study's `executor:` section through `executor_for(study)`):
inprocess (default) and local (spawned worker processes, one GPU each) in `local`, slurm
(submitit job arrays) in `slurm`, ray (Ray tasks) in `ray`. Each backend is imported only when
chosen, so neither cluster engine is needed for the others; the backends import `base` only,
never this registry.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ablate.errors import ConfigError
from ablate.run.executors.base import Executor
from ablate.study import ExecutorSpec, Study


def _inprocess(spec: ExecutorSpec, workdir: Path) -> Executor:
    from ablate.run.executors.local import InProcessExecutor

    return InProcessExecutor()


def _local(spec: ExecutorSpec, workdir: Path) -> Executor:
    from ablate.run.executors.local import LocalExecutor

    return LocalExecutor(spec.workers, spec.gpus, spec.threads_per_worker)


def _slurm(spec: ExecutorSpec, workdir: Path) -> Executor:
    from ablate.run.executors.slurm import SlurmExecutor

    folder = spec.slurm.folder or workdir / "slurm"
    return SlurmExecutor(spec.slurm, folder, spec.threads_per_worker)


def _ray(spec: ExecutorSpec, workdir: Path) -> Executor:
    from ablate.run.executors.ray import RayExecutor

    return RayExecutor(spec.ray, spec.workers, spec.threads_per_worker)


EXECUTORS: dict[str, Callable[[ExecutorSpec, Path], Executor]] = {
    "inprocess": _inprocess,
    "local": _local,
    "slurm": _slurm,
    "ray": _ray,
}


def make_executor(
    spec: ExecutorSpec | str = "inprocess", workdir: Path | None = None, **options: Any
) -> Executor:
    """The executor a study's `executor:` section describes; a kind name plus options
    (`make_executor("local", workers=2)`) works too."""
    if isinstance(spec, str):
        try:
            spec = ExecutorSpec(kind=spec, **options)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "kind"
            raise ConfigError(
                f"executor.{where}: {first['msg']}; valid kinds: {', '.join(EXECUTORS)}"
            ) from None
    return EXECUTORS[spec.kind](spec, Path(workdir or Path.cwd()).absolute())


def executor_for(study: Study) -> Executor:
    """The executor of a study (`executor:` section; in-process when absent)."""
    return make_executor(study.executor, study.work_dir())
