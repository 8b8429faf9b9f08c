"""`aotrain report sweep=NAME|PARENT_RUN_ID`: a sweep's finished child runs from MLflow -> its report.

    aotrain report sweep=toy_replication                 # <paths.root>/sweeps/toy_replication/report
    aotrain report sweep=3f2a...c1 tracking_uri=http://127.0.0.1:5000 out=report/

The statistics, plots and Markdown are evaluation/sweep_{stats,plots,report}.py's; this file only
reads MLflow (one row per finished child run: its `sweep.<axis>` params and its final metrics) and
logs the report back to the parent run as artifacts under report/.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from aotrain.config import UserError, compose

REPORT_ARTIFACTS = "report"


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def collect_runs(client, parent_run_id: str):
    """DataFrame: one row per FINISHED child of `parent_run_id`; axis columns, eval/... metrics and the
    subset/... facts the fit logged (the pair NMI its subset reached, its NMI target, its distinct pairs)."""
    import pandas as pd

    from evaluation.fixed_nmi import PAIRS, REACHED, TARGET

    # params of aotrain.tracking.curated_params -> the report's columns (evaluation.fixed_nmi)
    subset_params = {"data_nmi": REACHED, "data_nmi_target": TARGET, "data_distinct_pairs": PAIRS}

    parent = client.get_run(parent_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                  max_results=50000)
    rows = []
    for run in children:
        if run.info.status != "FINISHED":
            continue
        row = {k.removeprefix("sweep."): _value(v) for k, v in run.data.params.items() if k.startswith("sweep.")}
        row.update({column: _value(run.data.params[param]) for param, column in subset_params.items()
                    if param in run.data.params})
        # Chance levels are properties of the benchmark, not outcomes: they stay out of the tables.
        row.update({k: v for k, v in run.data.metrics.items()
                    if k.startswith("eval/") and not k.startswith("eval/chance/")})
        row["run_id"] = run.info.run_id
        rows.append(row)
    return pd.DataFrame(rows)


def report_sweep(tracking_uri: str, parent_run_id: str, out_dir: Path, primary: str | None = None) -> Path:
    """Write the report of the sweep `parent_run_id` to out_dir and log it to the parent; returns report.md."""
    from mlflow.tracking import MlflowClient

    from evaluation.sweep_report import write_report

    client = MlflowClient(tracking_uri=tracking_uri)
    runs = collect_runs(client, parent_run_id)
    if runs.empty:
        raise UserError(f"sweep run {parent_run_id} has no finished child runs yet: nothing to report")
    parent = client.get_run(parent_run_id)
    axes = json.loads(parent.data.params.get("sweep.axes", "null")) or _axes(runs)
    primary = primary or parent.data.params.get("sweep.primary", "eval/unseen/pair_top1")
    title = f"Sweep {parent.data.tags.get('aotrain.sweep', parent_run_id)}"
    written = write_report(runs, Path(out_dir), axes=axes, title=title, primary=primary,
                           design=parent.data.params.get("sweep.budget"))
    runs.to_csv(Path(out_dir) / "runs.csv", index=False)
    client.log_artifacts(parent_run_id, str(out_dir), artifact_path=REPORT_ARTIFACTS)
    return written["report.md"] if "report.md" in written else Path(out_dir) / "report.md"


def _axes(runs) -> list[str]:
    return [c for c in runs.columns if c != "run_id" and not c.startswith(("eval/", "subset/"))]


def find_sweep(sweep: str, root: Path, tracking_uri: str) -> tuple[str, str, Path]:
    """(tracking URI, parent run id, sweep folder) of a sweep given by name (its folder under
    <root>/sweeps) or by its parent run id in `tracking_uri`."""
    state = root / "sweeps" / sweep / "sweep.json"
    if state.is_file():
        data = json.loads(state.read_text())
        return data["tracking_uri"], data["parent_run_id"], state.parent
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient(tracking_uri=tracking_uri).get_run(sweep)
    except MlflowException:
        raise UserError(f"no sweep {sweep!r}: neither {state} nor a run with that id in {tracking_uri}") from None
    if run.data.tags.get("aotrain.kind") != "sweep":
        raise UserError(f"run {sweep} is not a sweep's parent run (tag aotrain.kind={run.data.tags.get('aotrain.kind')})")
    return tracking_uri, sweep, root / "sweeps" / run.data.tags.get("aotrain.sweep", sweep)


REPORT_HELP = """usage: aotrain report sweep=NAME|PARENT_RUN_ID [out=DIR] [paths.root=DIR] [tracking_uri=URI]

Read a sweep's finished runs from MLflow and write its report: per-cell tables (mean ± 95% CI over
seeds), effect sizes (slopes against NMI and log size, CLIP minus supervised) and plots, as
report.md + CSV + PNG in DIR (default <sweep folder>/report), also logged to the parent run."""


def report_main(args: list[str]) -> int:
    if not args or "-h" in args or "--help" in args:
        print(REPORT_HELP)
        return 0
    cfg = compose(args, config_name="report")  # recipes/report.yaml: the same key errors as fit, eval, sweep
    if not cfg.sweep:
        raise UserError("give sweep=NAME (a folder under <paths.root>/sweeps) or sweep=PARENT_RUN_ID")
    root = Path(cfg.paths.root)
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root}/mlflow.db"
    uri, parent, sweep_dir = find_sweep(str(cfg.sweep), root, uri)
    report = report_sweep(uri, parent, Path(cfg.out or sweep_dir / "report"))
    print(f"report {report}", file=sys.stdout)
    return 0
