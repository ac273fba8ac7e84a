"""The `ablate` command: a thin mirror of the library; each subcommand calls one function."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ablate.errors import AblateError, ConfigError


def _load(path: str):
    from ablate.study_load import load_study

    return load_study(Path(path)), Path(path).read_text()


def cmd_run(args: argparse.Namespace) -> int:
    from ablate.expand import describe, expand
    from ablate.run.driver import run_study
    from ablate.run.study_data import declared_regions

    if args.dry_run:  # the grid stands without the data; the time estimate says why it needs it
        from ablate.study_load import load_study

        study = load_study(Path(args.study), check_paths=False)
        train_jobs, eval_jobs = expand(study, "dry-run", declared_regions(study))
        print(describe(study, (train_jobs, eval_jobs)))
        _print_estimate(study)
        return 0
    study, text = _load(args.study)
    from ablate.run.progress import for_terminal

    progress = for_terminal()
    try:
        summary = run_study(study, text, progress=progress, study_file=args.study)
    finally:
        progress.close()
    phases = [("trainings", summary.trainings), ("evaluations", summary.evaluations)]
    for name, count in (("ensembles", summary.ensembles), ("test-set evaluations", summary.tests)):
        if count.run or count.skipped:  # shown only for studies that have them
            phases.append((name, count))
    print("; ".join(f"{name}: {c.run} run, {c.skipped} already done" for name, c in phases))
    if summary.report:
        print(f"report: {summary.report}")
        _print_best(study)
    if summary.browse:
        print(summary.browse)
    if summary.failed:
        print(f"{len(summary.failed)} job(s) failed: " + "; ".join(summary.failed), file=sys.stderr)
        return 1
    return 0


def _print_best(study) -> None:
    from ablate.run.results import fetch_results
    from ablate.run.store import default_tracking_uri
    from ablate.run.study_data import workdir_of

    results = fetch_results(default_tracking_uri(study, workdir_of(study)), study.name)
    dsc = results.tidy[results.tidy.metric == "dsc"]
    if dsc.empty:
        return
    target = "kidney" if "kidney" in set(dsc.target) else sorted(set(dsc.target))[0]
    means = dsc[dsc.target == target].groupby("variant").value.mean().sort_values()
    print(
        f"best variant: {means.index[-1]}  mean {target} DSC = {means.iloc[-1]:.4f} "
        f"(n = {int((dsc.target == target).sum() / len(means))} cases)"
    )
    test = results.test[(results.test.metric == "dsc") & (results.test.target == target)]
    if not test.empty:
        model = test.model.where(test.model == "ensemble", "single fold")
        means = test.assign(model=model).groupby(["variant", "model"]).value.mean()
        ranked = "ensemble" if "ensemble" in set(model) else "single fold"
        best = means.xs(ranked, level="model").idxmax()
        shown = ", ".join(f"{m} {v:.4f}" for m, v in means[best].items())
        print(f"held-out test set ({test.case.nunique()} cases), {best}: mean {target} DSC {shown}")


def _print_estimate(study) -> None:
    """Measured time estimate: a few real iterations and windows per distinct setting."""
    from ablate.run.estimate import estimate_text, measure
    from ablate.run.status import planned_capacity

    try:
        times = measure(study, say=lambda text: print(text, flush=True))
    except AblateError as error:  # the grid above stands without the data; the timing needs it
        print(f"time estimate: not measured: {error}")
        return
    print(estimate_text(times, planned_capacity(study)))


def cmd_validate(args: argparse.Namespace) -> int:
    from ablate.expand import describe, expand
    from ablate.nets.summary import describe_networks
    from ablate.run.study_data import declared_regions

    study, _ = _load(args.study)
    print(describe(study, expand(study, "validate", declared_regions(study))))
    print(describe_networks(study))
    if args.time:
        _print_estimate(study)
    if args.power_from:
        print("\n".join(_power_lines(study, Path(args.power_from), args.detect, args.cases)))
    return 0


def _power_lines(study, pilot: Path, detect: str | None, cases: int | None) -> list[str]:
    """Power planning for `study` from a finished pilot's MLflow store (read, never created)."""
    from ablate.report.planning import (
        comparison_kinds,
        pilot_variances,
        plan_study,
        planning_text,
        study_design,
    )
    from ablate.run.results import fetch_results
    from ablate.run.store import default_tracking_uri
    from ablate.study import baseline_variant, variant_label
    from ablate.study_load import load_study

    margins = _detect_arg(detect) if detect else dict(study.analysis.noninferiority_margin)
    if pilot.is_dir():  # a work dir: runs/<study name>/mlflow.db
        name, uri, reference = pilot.name, f"sqlite:///{pilot.absolute() / 'mlflow.db'}", None
    else:
        done = load_study(pilot, check_paths=False)
        name, uri = done.name, default_tracking_uri(done, done.work_dir())
        reference = variant_label(baseline_variant(done)) if done.axes else None
    pilots = pilot_variances(fetch_results(uri, name), reference)
    design, kinds = study_design(study, cases), comparison_kinds(study)
    return planning_text(plan_study(pilots, design, kinds, margins), name, design, kinds, pilots)


def _detect_arg(text: str) -> dict[str, float]:
    """--detect "dsc=0.02,nsd=0.02" -> {"dsc": 0.02, "nsd": 0.02}."""
    out = {}
    for item in text.split(","):
        metric, _, value = item.partition("=")
        try:
            out[metric.strip()] = float(value)
        except ValueError:
            raise ConfigError(
                f"--detect {text!r}: give metric=difference pairs, e.g. dsc=0.01,nsd=0.01 "
                "(fractions for dsc, nsd and abs_rvd; mm for hd95 and assd)"
            ) from None
    return out


def cmd_report(args: argparse.Namespace) -> int:
    from ablate.run.study_report import build_study_report

    study, text = _load(args.study)
    print(f"report: {build_study_report(study, text)}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ablate.run.status import study_status

    study, _ = _load(args.study)
    print(study_status(study))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from ablate.data.synthetic import make_synthetic_dataset

    dataset = make_synthetic_dataset(Path(args.out), cases=args.cases, seed=args.seed)
    print(f"wrote {len(dataset.cases)} cases to {dataset.root}")
    return 0


def _labels_arg(text: str | None) -> dict[str, int] | None:
    """--labels background=0,liver=1 -> {"background": 0, "liver": 1}."""
    from ablate.errors import ConfigError

    if text is None:
        return None
    try:
        pairs = [item.split("=") for item in text.split(",")]
        return {name.strip(): int(value) for name, value in pairs}
    except ValueError as exc:
        raise ConfigError(
            f"--labels {text!r}: give name=value pairs separated by commas, e.g. "
            "background=0,liver=1"
        ) from exc


def cmd_verify(args: argparse.Namespace) -> int:
    from ablate.data.formats import read_dataset
    from ablate.data.verify import usable_cases, verify

    dataset = read_dataset(Path(args.dataset), args.format, _labels_arg(args.labels))
    problems = verify(dataset)
    for problem in problems:
        print(problem)
    errors = sum(p.severity == "error" for p in problems)
    usable = usable_cases(dataset, problems)
    print(
        f"{errors} error(s), {len(problems) - errors} warning(s); "
        f"{usable} of {len(dataset.cases)} cases usable"
    )
    return 2 if errors else 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ablate.data.convert import convert, predictions_to_source_grid
    from ablate.data.formats import detect_format, read_dataset

    if args.predictions:
        fmt = args.format or detect_format(Path(args.dataset))
        written = predictions_to_source_grid(
            Path(args.dataset), fmt, Path(args.predictions), Path(args.out)
        )
        print(f"wrote {len(written)} predictions in the source grid to {args.out}")
        return 0
    dataset = read_dataset(Path(args.dataset), args.format, _labels_arg(args.labels))
    out = convert(dataset, Path(args.out))
    print(f"wrote {len(dataset.cases)} cases as an nnU-Net v2 raw dataset to {out}")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from ablate.run.study_data import load_dataset, prepare_data

    study, _ = _load(args.study)
    dataset, _ = load_dataset(study, check=True)
    data = prepare_data(study, dataset)
    print(f"preprocessed {len(data.case_ids)} cases into {data.root}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ablate.data.dataset import evaluation_spec
    from ablate.evaluate import evaluate_dataset, evaluate_folder

    if args.dataset_json is None and _is_dataset(Path(args.ref_dir)):  # e.g. data/kits19
        from ablate.data.formats import read_dataset

        dataset = read_dataset(Path(args.ref_dir))
        table = evaluate_dataset(Path(args.pred_dir), dataset, args.nsd_tolerance_mm)
        table.to_csv(Path(args.out), index=False)
        print(f"wrote {len(table)} rows for {table.case.nunique()} cases to {args.out}")
        return 0
    dataset_json = Path(args.dataset_json or Path(args.ref_dir).parent / "dataset.json")
    spec, file_ending = evaluation_spec(dataset_json)
    targets = spec.targets
    table = evaluate_folder(
        Path(args.pred_dir),
        Path(args.ref_dir),
        targets,
        {t: args.nsd_tolerance_mm for t in targets},
        file_ending=file_ending,
        ignore_label=spec.ignore_label,
    )
    out = Path(args.out)
    table.to_csv(out, index=False)
    print(f"wrote {len(table)} rows for {table.case.nunique()} cases to {out}")
    return 0


def _is_dataset(path: Path) -> bool:
    """REF_DIR is a dataset root in a layout ablate reads, not a folder of label files."""
    from ablate.data.formats import detect_format

    try:
        detect_format(path)
    except AblateError:
        return False
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ablate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="plan, preprocess, train and evaluate a study, then report")
    p.add_argument("study")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config and jobs, and the hours they take (measured here)",
    )
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("validate", help="check a study and print its jobs")
    p.add_argument("study")
    p.add_argument(
        "--time", action="store_true", help="also measure a few iterations and estimate hours"
    )
    p.add_argument(
        "--power-from",
        metavar="PILOT",
        help="a finished pilot (its study YAML or work dir): print the minimum detectable "
        "difference at 80%% power for this study's cases, folds and seeds",
    )
    p.add_argument(
        "--detect",
        metavar="METRIC=DIFF,...",
        help="with --power-from: the difference to detect (default: the study's "
        "analysis.noninferiority_margin), e.g. dsc=0.01",
    )
    p.add_argument(
        "--cases",
        type=int,
        help="with --power-from: cross-validation cases (default: counted from the dataset)",
    )
    p.set_defaults(func=cmd_validate)
    for name, func, text in [
        ("report", cmd_report, "rebuild the report from MLflow"),
        ("status", cmd_status, "show each job's state"),
        ("preprocess", cmd_preprocess, "only plan and preprocess"),
    ]:
        p = sub.add_parser(name, help=text)
        p.add_argument("study")
        p.set_defaults(func=func)
    p = sub.add_parser("synth", help="write a synthetic KiTS-like dataset (nnU-Net raw layout)")
    p.add_argument("out")
    p.add_argument("--cases", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)
    p = sub.add_parser("verify", help="check a dataset's integrity")
    p.add_argument("dataset")
    p.add_argument("--format", default=None)
    p.add_argument("--labels", default=None, help="name=value,... (needed by --format folder)")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser(
        "convert",
        help="write a dataset as an nnU-Net v2 raw dataset, or (with "
        "--predictions) predictions back in the dataset's own grid",
    )
    p.add_argument("dataset")
    p.add_argument("out")
    p.add_argument("--format", default=None)
    p.add_argument("--labels", default=None, help="name=value,... (needed by --format folder)")
    p.add_argument("--predictions", default=None, help="folder of predictions to write back")
    p.set_defaults(func=cmd_convert)
    p = sub.add_parser(
        "evaluate",
        help="score a folder of predicted label maps against REF_DIR: a folder of labels, or a "
        "dataset as downloaded (e.g. data/kits19)",
    )
    p.add_argument("pred_dir")
    p.add_argument("ref_dir")
    p.add_argument(
        "--dataset-json", default=None, help="labels/regions (default: REF_DIR/../dataset.json)"
    )
    p.add_argument("--nsd-tolerance-mm", type=float, default=2.0)
    p.add_argument("--out", default="metrics.csv")
    p.set_defaults(func=cmd_evaluate)
    return parser


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    args = build_parser().parse_args(argv)
    # a cancelled cluster job gets SIGTERM: treat it like Ctrl-C so runs are closed cleanly
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if on_main_thread else None
    try:
        return args.func(args)
    except AblateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: finished jobs are kept; run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
