"""Reading a study file: safe YAML, the typed schema, and one-line errors that name the file, the
key path and the fix (unknown keys with the closest valid one, bad axis values, missing data)."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ablate.config import Frozen
from ablate.errors import ConfigError
from ablate.expand import TEST_ONLY_FIELDS
from ablate.study import (
    PRESETS,
    SECTIONS,
    Study,
    _check_registries,
    ensemble_members,
    grid_cells,
    resolve_variant,
    valid_axis_names,
    variant_label,
)

DATASET_HINTS = {
    "kits19": "clone github.com/neheller/kits19 and run its get_imaging script",
    "kits21": "clone github.com/neheller/kits21 and run its get_imaging script",
    "kits23": "clone github.com/neheller/kits23 and run kits23_download_data",
    "flare21": "download FLARE21 from the FLARE21 challenge page (flare.grand-challenge.org)",
    "msd": "download the task from medicaldecathlon.com",
    "nnunet": "point dataset.path at an nnU-Net v2 raw folder (dataset.json, imagesTr/, labelsTr/)",
    "nnunet_v1": "point dataset.path at an nnU-Net v1 TaskNNN_Name folder",
    "ct_ich": "download physionet.org/content/ct-ich/1.3.1 (ct_scans/, masks/)",
    "folder": "point dataset.path at your images/ and labels/ folders",
}


def load_study(path: str | Path, check_paths: bool = True) -> Study:
    """Read and validate a study YAML. Every problem is a one-line ConfigError naming the file and
    key. `check_paths=False` skips the dataset/splits existence checks (for `validate` of a study
    whose data lives elsewhere, and for tests)."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"{source}: study file not found; check the path")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            f"{source}: YAML syntax error at {where}: {problem}; fix the YAML"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a study must be a YAML mapping with name, dataset, ...")
    if isinstance(raw.get("name"), str):
        # beside the study file, so every command finds the same runs and report from any
        # directory
        if raw.get("workdir") is None:
            raw["workdir"] = str(Path("runs") / raw["name"])
        if raw.get("report_dir") is None:
            raw["report_dir"] = str(Path("reports") / raw["name"])
    _resolve_relative_paths(raw, path.parent.absolute())
    try:
        study = Study.model_validate(raw)
    except ValidationError as exc:
        raise _validation_error(source, exc) from None
    check_study(study, source)
    if check_paths:
        _check_paths(study, source)
    return study


def _resolve_relative_paths(raw: dict, folder: Path) -> None:
    def resolve(tree: Any, key: str) -> None:
        if isinstance(tree, dict) and isinstance(tree.get(key), str):
            value = Path(tree[key]).expanduser()
            tree[key] = os.path.normpath(value if value.is_absolute() else folder / value)

    dataset = raw.get("dataset")
    resolve(dataset, "path")
    resolve(dataset.get("test") if isinstance(dataset, dict) else None, "path")
    resolve(raw.get("folds"), "splits_file")
    resolve(raw, "workdir")
    for name in list(raw.get("external") or {}):
        resolve(raw["external"], name)
    resolve(raw, "report_dir")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _keypath(loc: tuple) -> str:
    parts = ""
    for p in loc:
        if isinstance(p, int):
            parts += f"[{p}]"
        elif "[" in p or p in {"int", "float", "str", "bool", "none", "list", "dict"}:
            continue  # pydantic names union members in the location; users never wrote those
        else:
            parts += f".{p}" if parts else p
    return parts or "<top level>"


def _model_in(annotation: Any) -> Any:
    """The pydantic model class inside an annotation such as `CTWindow | None`."""
    if isinstance(annotation, type) and issubclass(annotation, Frozen):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _valid_keys(loc: tuple) -> list[str]:
    model: Any = Study
    for part in loc:
        if isinstance(part, str) and model is not None and part in model.model_fields:
            model = _model_in(model.model_fields[part].annotation)
    return list(model.model_fields) if model is not None else []


def _validation_error(source: str, exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    key = _keypath(loc)
    if err["type"] == "extra_forbidden":
        valid = _valid_keys(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"
        return ConfigError(f"{source}: unknown key {key!r}; {hint}")
    if err["type"] == "missing":
        return ConfigError(f"{source}: missing required key {key!r}; add it")
    message = _one_line(err["msg"]).removeprefix("Value error, ")
    got = _one_line(repr(err.get("input")))[:60]
    return ConfigError(f"{source}: {key}: {message} (got {got}); fix the value")


def _unknown_axis(source: str, axis: str) -> ConfigError:
    close = difflib.get_close_matches(axis, valid_axis_names(), n=1, cutoff=0.7)
    hint = f"did you mean {close[0]!r}? " if close else ""
    section = axis.split(".")[0]
    if section in SECTIONS and not close:
        hint = f"valid {section}.* axes: {', '.join(SECTIONS[section].model_fields)}; "
    return ConfigError(
        f"{source}: axes.{axis}: unknown axis; {hint}axes are presets "
        f"({', '.join(PRESETS)}) or dotted paths into plan/train/infer"
    )


def _is_known_axis(axis: str) -> bool:
    if axis in PRESETS:
        return True
    section, _, rest = axis.partition(".")
    return section in SECTIONS and rest.split(".")[0] in SECTIONS[section].model_fields


def check_study(study: Study, source: str = "study") -> None:
    """Axis names, axis values (by resolving each), baseline, include/exclude and registries."""
    try:
        _check_registries(study.train)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}; fix the value") from None
    for axis, values in study.axes.items():
        if not _is_known_axis(axis):
            raise _unknown_axis(source, axis)
        if not values:
            raise ConfigError(f"{source}: axes.{axis}: empty list; give at least one value")
        for i, value in enumerate(values):
            if value in values[:i]:
                raise ConfigError(f"{source}: axes.{axis}[{i}]: duplicate {value!r}; remove it")
            _check_cell(study, {axis: value}, f"{source}: axes.{axis}[{i}]")
    for name in ("include", "exclude", "baseline"):
        value = getattr(study, name)
        partials = value if name != "baseline" else [value] if value else []
        for i, partial in enumerate(partials):
            where = f"{source}: {name}" + (f"[{i}]" if name != "baseline" else "")
            unknown = [a for a in partial if a not in study.axes]
            if unknown:
                raise ConfigError(
                    f"{where}: {unknown[0]!r} is not an axis of this study; use one "
                    f"of: {', '.join(study.axes) or '(no axes)'}"
                )
            _check_cell(study, partial, where)
    for axis, value in (study.baseline or {}).items():
        if value not in study.axes[axis]:
            raise ConfigError(
                f"{source}: baseline.{axis}: {value!r} is not among the axis values "
                f"{study.axes[axis]}; pick one of them"
            )
    if study.axes and not grid_cells(study):
        raise ConfigError(f"{source}: exclude removes every grid cell; loosen exclude")
    for name in study.ensembles:
        _check_ensemble(study, name, f"{source}: ensembles.{name}")
    for axis in sorted(TEST_ONLY_FIELDS):
        if f"infer.{axis}" in study.axes:
            raise ConfigError(
                f"{source}: axes.infer.{axis}: not an axis: cross-validation cases "
                "are always scored by the one fold model that did not train on "
                f"them; set infer.{axis} instead, and every variant is scored on "
                "dataset.test by each fold model and by the ensemble"
            )
    runs = study.folds.run if study.folds.run is not None else range(study.folds.k)
    if study.infer.ensemble_folds and len(runs) < 2:
        raise ConfigError(
            f"{source}: infer.ensemble_folds: folds.run {list(runs)} gives one "
            "fold model, nothing to ensemble; run at least two folds"
        )
    if study.infer.ensemble_folds and study.dataset.test is None:
        raise ConfigError(
            f"{source}: infer.ensemble_folds: a fold ensemble scored on "
            "cross-validation cases would use models that trained on them; declare "
            "a held-out test set (dataset.test: {holdout: N} or {path: ...}) or set "
            "it to false"
        )


def _check_ensemble(study: Study, name: str, where: str) -> None:
    """Two or more distinct grid cells sharing plan settings and output kind; a new name."""
    partials = study.ensembles[name]
    if len(partials) < 2:
        raise ConfigError(
            f"{where}: {len(partials)} member(s); an ensemble needs at least two grid cells"
        )
    grid = grid_cells(study)
    if name in {variant_label(c) for c in grid} | set(study.external):
        raise ConfigError(f"{where}: the name is already a variant's label; rename the ensemble")
    cells = ensemble_members(study, name)
    for i, (partial, cell) in enumerate(zip(partials, cells, strict=True)):
        unknown = [a for a in partial if a not in study.axes]
        if unknown:
            raise ConfigError(
                f"{where}[{i}]: {unknown[0]!r} is not an axis of this study; use "
                f"one of: {', '.join(study.axes) or '(no axes)'}"
            )
        if cell not in grid:
            raise ConfigError(
                f"{where}[{i}]: {variant_label(cell)} is not a cell of the grid "
                "(unnamed axes take the baseline value); name an existing cell"
            )
        if cell in cells[:i]:
            raise ConfigError(f"{where}[{i}]: {variant_label(cell)} is listed twice; remove it")
    configs = [resolve_variant(study, cell) for cell in cells]
    logits = any(infer.ensemble_average == "logits" for _, _, infer in configs)
    if logits and any(plan != configs[0][0] for plan, _, _ in configs):
        # members planned differently (nnU-Net's configurations) are averaged as exported
        # probabilities in the image's geometry, as nnU-Net ensembles configurations
        raise ConfigError(
            f"{where}: members differ in plan settings, which only "
            "infer.ensemble_average: probabilities can average; set it, or ensemble cells "
            "that share the plan"
        )
    if any(train.regions != configs[0][1].regions for _, train, _ in configs):
        raise ConfigError(
            f"{where}: members differ in train.regions; softmax and region "
            "(sigmoid) outputs cannot be averaged"
        )


def _check_cell(study: Study, variant: dict[str, Any], where: str) -> None:
    try:
        resolve_variant(study, variant)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        message = _one_line(err["msg"]).removeprefix("Value error, ")
        value = next(iter(variant.values()), None) if len(variant) == 1 else variant
        raise ConfigError(f"{where}: invalid value {value!r}: {message}; fix the value") from None


def guess_format(path: Path) -> str:
    name = path.name.lower()
    for kits in ("kits21", "kits23"):
        if kits in name:
            return kits
    if "kits" in name:
        return "kits19"
    if "ct-ich" in name or "ct_ich" in name:
        return "ct_ich"
    if "flare" in name:
        return "flare21"
    if name.startswith("task0") or name.startswith("task1"):
        return "msd"
    return "nnunet"


def _check_paths(study: Study, source: str) -> None:
    spec = study.dataset
    if spec.path is not None and not spec.path.exists():
        fmt = spec.format if spec.format != "auto" else guess_format(spec.path)
        raise ConfigError(
            f"{source}: dataset.path {spec.path} does not exist; "
            f"{DATASET_HINTS[fmt]}, or fix the path"
        )
    test = spec.test
    if test is not None and test.path is not None and not test.path.exists():
        raise ConfigError(
            f"{source}: dataset.test.path {test.path} does not exist; point it at a "
            "labelled dataset with the training set's channels and labels"
        )
    for name, folder in study.external.items():
        if not folder.is_dir():
            raise ConfigError(
                f"{source}: external.{name}: {folder} is not a folder; point it at "
                "a folder of predicted label maps named <case id><file ending>"
            )
    splits = study.folds.splits_file
    if splits is not None and not splits.exists():
        raise ConfigError(
            f"{source}: folds.splits_file {splits} does not exist; fix the path "
            "or remove the key to use seeded folds"
        )
