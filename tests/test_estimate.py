"""The time estimate measures a few real iterations and one case per distinct setting, scales
them to every job, stores the measurements and reads them back."""

from __future__ import annotations

import textwrap

from ablate.run.estimate import TIMINGS_NAME, JobTimes, _phase_wall, estimate_text, measure
from ablate.study_load import load_study

STUDY = """
name: timed
dataset:
  synthetic: {cases: 6, seed: 1, fov_mm: [50, 60, 60]}
  test: {holdout: 2}
plan: {gpu_memory_gb: 0.02, base_features: 4, max_features: 16, intensity_samples: 100000}
train: {epochs: 10, iterations_per_epoch: 8, val_iterations: 2, data_workers: 0}
infer: {tta: 1, ensemble_folds: true}
axes: {infer.tta: [1, 2]}
folds: {k: 2}
"""


def test_measure_scales_a_few_iterations_to_every_job(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(STUDY))
    study = load_study(path)
    said: list[str] = []
    times = measure(study, say=said.append)
    # one training setting, two inference settings: measured once each
    assert sum("training iterations" in s for s in said) == 1
    assert sum("validation case" in s for s in said) == 2
    assert len(times.seconds["train"]) == 2 and len(times.seconds["eval"]) == 4
    assert len(times.seconds["test"]) == 2
    assert all(s > 0 for kind in times.seconds.values() for s in kind)
    assert (study.work_dir() / TIMINGS_NAME).is_file()
    again: list[str] = []
    assert measure(study, say=again.append).seconds == times.seconds  # read back, not measured
    assert again == []
    text = estimate_text(times, 1)
    assert "trainings: 2 x about" in text and "CPU-hours" in text and "in all:" in text


def test_wall_time_fills_the_slots_longest_first():
    assert _phase_wall([4.0, 3.0, 3.0, 2.0], 2) == 6.0
    assert _phase_wall([4.0, 3.0], 1) == 7.0
    times = JobTimes({"train": [3600.0, 3600.0]}, 60.0, "cuda:0")
    text = estimate_text(times, 2)
    assert "2.00 GPU-hours" in text and "about 60 min from start to end" in text
