"""OOD benchmark: MaxQuery against the baseline scores, the QD-loss ablation and an nnU-Net-like DynUNet.

Trains (or reuses the cached checkpoints of) three models with fixed seeds on the phantom benchmark, evaluates each
on ``test`` + ``test_ood`` with ``configs/evaluate.json`` and writes into ``--out`` (default ``docs/benchmark``):

- ``results.json`` and ``results.md``: Dice per inlier class, pixel-level AUROC / AUPR / FPR95 and case-level AUROC
  of every score of every model, the machine, the seeds, the settings and the time taken;
- ``roc_pr.png``: ROC and precision-recall curves of the pooled ROI voxels;
- ``ood_cases.png``: image, ground truth, segmentation and MaxQuery map of a few OOD cases (model c).

The models, each a plain layering of the bundle configs:

- ``a_dynunet``: ``configs/train.json`` + ``configs/baseline_dynunet.json`` (per-voxel head, same backbone);
- ``b_mask_transformer_no_qd``: ``configs/train.json`` with ``--loss#qd_weight 0``;
- ``c_mask_transformer_qd``: ``configs/train.json`` as shipped;
- ``d_mask_transformer_qd_dot_product``: ablation of ``c`` with unnormalised embeddings (dot-product affinities
  instead of cosine ones);
- ``e_mask_transformer_qd_32_queries``: ablation of ``c`` with twice the queries (8 per class);
- ``f_mask_transformer_qd_free_class_head``: ablation of ``c`` with a learnt class head instead of the fixed class
  of each query (the tumour queries then share one class mix);
- ``g_mask_transformer_qd_compactness``: ``c`` plus the query-compactness loss (``--compactness_weight 1``), which
  pulls every labelled voxel onto a cluster centre of its class;
- ``h_mask_transformer_qd_outlier_exposure``: ``c`` with outlier exposure: altered inlier lesions and foreign
  tissue as synthetic anomalies, and the MaxQuery margin loss (off by default: from the first epoch it raised the
  entropy baseline, not MaxQuery; the shipped model is fine-tuned with it, see ``docs/benchmark/README.md``).

Every model runs in the same organ-region cascade: one organ localiser is trained first (``WORK_DIR/localiser``)
and shared by all of them, so they differ only in what runs inside the organ box.

Run from the bundle root::

    python benchmarks/ood_benchmark.py [--variants NAME ...] [--max_epochs N] [--reuse] [--ID VALUE ...]

Further ``--ID VALUE`` pairs are config overrides applied to every model (e.g. a larger network on a GPU).
``--parallel`` trains and evaluates the variants side by side, one process each (small models leave a large GPU
mostly idle); with ``--train_seconds S`` it first times a few epochs of every variant under the same concurrency and
sets ``max_epochs`` so that training takes about ``S`` seconds. ``--report_only`` rebuilds the report from the
evaluations in ``--work_dir``. ``--reference RESULTS_JSON`` takes a compared model that is left out of
``--variants`` (e.g. the DynUNet of an earlier report, same data and evaluation) from that report, and says so.
Settings are chosen on inlier validation data only; ``test_ood`` is used for reporting, never for tuning.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from monai.bundle import run  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.concurrent_runs import PROBE_EPOCHS, fit_epochs, run_concurrently  # noqa: E402
from bundle.configs import config_files, flatten_configs  # noqa: E402
from bundle.data import ensure_dataset, load_datalist, ood_label_values  # noqa: E402
from bundle.handlers import ROI_VOXEL_KEYS  # noqa: E402
from bundle.metrics import REFERENCE_SCORE, evaluation_intervals, lead_table_header, lead_table_rows  # noqa: E402
from bundle.ood import CLASS_CENTRED_SCORE  # noqa: E402
from bundle.scripts.pipeline import parse_overrides  # noqa: E402

VARIANTS: dict[str, dict] = {
    "a_dynunet": {"configs": ["baseline_dynunet.json"], "overrides": {}},
    "b_mask_transformer_no_qd": {"configs": [], "overrides": {"loss#qd_weight": 0.0}},
    "c_mask_transformer_qd": {"configs": [], "overrides": {}},
    "d_mask_transformer_qd_dot_product": {"configs": [], "overrides": {"network_def#normalize_embeddings": False}},
    "e_mask_transformer_qd_32_queries": {
        "optional": True,  # not in the default set
        "configs": [],
        "overrides": {"queries_per_class": "$[8] * @num_classes"},
    },
    "f_mask_transformer_qd_free_class_head": {
        "optional": True,
        "configs": [],
        # the tumour queries share one QD group and learn their classes: the set-up that collapses; with learnt
        # classes there are no fixed groups of queries for the balance loss to share out
        "overrides": {
            "network_def#queries_per_class": None,
            "network_def#num_queries": "$sum(@queries_per_class)",
            "balance_weight": 0.0,
        },
    },
    "g_mask_transformer_qd_compactness": {
        "optional": True,
        "configs": [],
        "overrides": {"compactness_weight": 1.0},
    },
    "h_mask_transformer_qd_outlier_exposure": {
        "optional": True,
        "configs": [],
        # (c) with synthetic anomalies (altered lesions, foreign tissue) and the MaxQuery margin loss
        "overrides": {
            "outlier_exposure#lesion_prob": 0.33,
            "outlier_exposure#prob": 0.2,
            "outlier_exposure#margin_weight": 1.0,
        },
    },
}
DEFAULT_VARIANTS = tuple(name for name, variant in VARIANTS.items() if not variant.get("optional"))
REQUIRED = ("a_dynunet", "c_mask_transformer_qd")
TARGETS = {"auroc": 0.90, "aupr": 0.30, "case_auroc": 0.85}
GOALS = {"auroc": 0.95, "aupr": 0.60, "fpr95": 0.25, "case_auroc": 0.95}
AUROC_MARGIN = 0.05
MAXQUERY_SCORES = ("maxquery", CLASS_CENTRED_SCORE)
"""The method's own scores; every other score of every model is a baseline."""
SEED = 0


def phantom_seed(dataset: Path) -> int | None:
    """The generator seed of a phantom dataset (``None`` for other datasets)."""
    cases = dataset / "phantom_cases.json"
    return json.loads(cases.read_text()).get("seed") if cases.is_file() else None


def machine() -> str:
    """A one-line description of where the benchmark ran."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    return f"{platform.processor() or platform.machine()}; {device}; torch {torch.__version__}"


def bundle_run(names: list[str], overrides: dict) -> None:
    """``monai.bundle run`` of the given configs from ``configs/`` (layered on ``common.json``) with overrides."""
    run(
        config_file=config_files(*names, root=ROOT),
        meta_file=str(ROOT / "metadata.json"),
        logging_file=str(ROOT / "configs" / "logging.conf"),
        **overrides,
    )


def train_localiser(work: Path, common: dict, reuse: bool) -> Path:
    """Train the organ localiser shared by every variant (unless cached); return its checkpoint."""
    path = work / "localiser" / "localiser.pt"
    if not (reuse and path.is_file()):
        overrides = {**common, "ckpt_dir": str(path.parent), "output_dir": str(work / "localiser" / "train")}
        bundle_run(["train.json"], {**overrides, "run": ["$@localiser_train#trainer.run()"]})
    return path


def train_and_evaluate(
    name: str, work: Path, common: dict, max_epochs: int | None, reuse: bool, train_only: bool = False
) -> None:
    """Train one variant unless its checkpoint is cached, evaluate it; write ``timings.json`` beside its outputs."""
    variant = VARIANTS[name]
    overrides = {"localiser_ckpt_path": str(work / "localiser" / "localiser.pt"), **common, **variant["overrides"]}
    overrides.update(ckpt_dir=str(work / name / "models"), train_localiser=False)
    timings_path = work / name / "timings.json"
    reused = reuse and (work / name / "models" / "model.pt").is_file()
    timings = json.loads(timings_path.read_text()) if reused and timings_path.is_file() else {}
    if not reused:
        start = time.perf_counter()
        train_overrides = {**overrides, "output_dir": str(work / name / "train")}
        if max_epochs is not None:
            train_overrides["train#trainer#max_epochs"] = max_epochs
        bundle_run(["train.json", *variant["configs"]], train_overrides)
        timings.update(train_s=round(time.perf_counter() - start, 1), train_machine=machine())
    if train_only:
        return
    metrics_path = work / name / "evaluation" / "metrics.json"
    model_path = work / name / "models" / "model.pt"
    if (
        reused
        and metrics_path.is_file()
        and metrics_path.stat().st_mtime > max(model_path.stat().st_mtime, _code_mtime())
    ):
        return  # evaluated after the cached checkpoint, the configs and the code were last written
    start = time.perf_counter()
    eval_overrides = {**overrides, "output_dir": str(work / name / "evaluation"), "save_scores": True}
    bundle_run(["train.json", "evaluate.json", *variant["configs"]], eval_overrides)
    timings.update(evaluate_s=round(time.perf_counter() - start, 1), evaluate_machine=machine())
    timings_path.write_text(json.dumps(timings) + "\n")


def _code_mtime() -> float:
    """When the evaluation's configs or code last changed: an evaluation older than that is stale."""
    files = [*(ROOT / "configs").glob("*.json"), *(ROOT / "bundle").rglob("*.py")]
    return max(f.stat().st_mtime for f in files)


def load_result(name: str, work: Path) -> dict:
    """Metrics and timings of an evaluated variant."""
    metrics_path = work / name / "evaluation" / "metrics.json"
    if not metrics_path.is_file():
        raise SystemExit(f"{name}: no evaluation at {metrics_path}; run without --report_only first.")
    timings_path = work / name / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    return {"metrics": json.loads(metrics_path.read_text()), "timings": timings}


def child_command(name: str, args: argparse.Namespace, extra: list[str], **flags) -> list[str]:
    """This script, for one variant, as a separate process (``flags``: further options, ``None`` values dropped)."""
    command = [sys.executable, __file__, "--variants", name, "--dataset_dir", args.dataset_dir, "--child"]
    for key, value in flags.items():
        if value is True:
            command.append(f"--{key}")
        elif value not in (None, False):
            command += [f"--{key}", str(value)]
    return command + extra


def fit_epochs_to_budget(args: argparse.Namespace, extra: list[str], work: Path, val_interval: int) -> int:
    """Time a few epochs of every variant side by side; the epochs that fit ``args.train_seconds`` (recorded in
    ``work/epoch_fit.json``)."""
    probe_extra = [*extra, "--val_interval", "2"]
    probes = {
        name: child_command(name, args, probe_extra, work_dir=work / "probe", max_epochs=PROBE_EPOCHS, train_only=True)
        for name in args.variants
    }
    epochs, seconds_per_epoch = fit_epochs(probes, work / "probe", args.train_seconds, val_interval)
    epoch_fit = {"train_seconds": args.train_seconds, "epochs": epochs, "seconds_per_epoch": seconds_per_epoch}
    (work / "epoch_fit.json").write_text(json.dumps(epoch_fit) + "\n")
    print(f"{epochs} epochs fit {args.train_seconds} s (seconds per epoch: {seconds_per_epoch})")
    return epochs


def reference_results(path: Path, names: list[str]) -> dict:
    """The entries of ``names`` in an earlier report (``results.json``), each marked with the report it came from.

    A model whose checkpoint is not at hand (e.g. a baseline trained for an earlier version, on the same data, with
    the same evaluation) is then compared by its recorded metrics and intervals, and the report says so.
    """
    earlier = json.loads(path.read_text())["models"]
    shown = str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)
    return {name: {**earlier[name], "reference": shown} for name in names if name in earlier}


def best_baseline(results: dict) -> dict[str, float]:
    """The best value of each pixel metric over every score of every model that is not MaxQuery (or its
    class-centred form)."""
    best = {"auroc": -np.inf, "aupr": -np.inf, "fpr95": np.inf, "case_auroc": -np.inf}
    for result in results.values():
        for method, values in result["metrics"]["pixel_ood"].items():
            if method in MAXQUERY_SCORES:
                continue
            best["auroc"] = max(best["auroc"], values["auroc"])
            best["aupr"] = max(best["aupr"], values["aupr"])
            best["fpr95"] = min(best["fpr95"], values["fpr95"])
            best["case_auroc"] = max(best["case_auroc"], result["metrics"]["case_ood"][method]["auroc"])
    return best


def bootstrap_intervals(work: Path, name: str, num_replicates: int = 1000, seed: int = SEED) -> dict:
    """Case-bootstrap 95% intervals of every metric of an evaluated variant (``work/name/evaluation``), with
    MaxQuery's lead over every other score of the variant where it has MaxQuery (:func:`evaluation_intervals`)."""
    return evaluation_intervals(work / name / "evaluation", REFERENCE_SCORE, num_replicates, seed)


def with_interval(value: float, interval: dict | None) -> str:
    """``value`` to three decimals, followed by ``[low, high]`` where an interval is given."""
    if not interval or not np.isfinite([interval["low"], interval["high"]]).all():
        return f"{value:.3f}"
    return f"{value:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"


def markdown(report: dict) -> str:
    """The results as markdown tables, with case-bootstrap intervals where ``report["models"][name]`` has
    ``"intervals"`` (from :func:`bootstrap_intervals`)."""
    trained_on = sorted({r["timings"].get("train_machine", "not recorded") for r in report["models"].values()})
    lines = [
        f"# OOD benchmark\n\nTrained on: {'; '.join(trained_on)}. Report made on: {report['machine']}. "
        f"Seeds: {report['seeds']}. Settings: `{json.dumps(report['settings'])}`.\n"
    ]
    for name, result in report["models"].items():
        if result.get("reference"):
            lines.append(f"{name}: the figures of `{result['reference']}` (not re-evaluated in this run).\n")
    settings = [r["intervals"]["bootstrap"] for r in report["models"].values() if r.get("intervals")]
    if settings:
        lines.append(
            f"Values [low, high]: {100 * settings[0]['confidence']:g}% percentile intervals of a bootstrap over "
            f"cases ({settings[0]['num_replicates']} replicates, seed {settings[0]['seed']}, cases resampled with "
            "replacement within test and within test_ood; pixel metrics of a replicate from its cases' ROI voxels, "
            f"scores in at most {settings[0]['num_bins']} bins).\n"
        )
    lines.append("| model | score | pixel AUROC | AUPR | FPR95 | case AUROC | near-OOD AUROC |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    for name, result in report["models"].items():
        intervals = result.get("intervals") or {}
        for method, values in result["metrics"]["pixel_ood"].items():
            pixel = intervals.get("pixel_ood", {}).get(method, {})
            case = with_interval(
                result["metrics"]["case_ood"][method]["auroc"],
                intervals.get("case_ood", {}).get(method, {}).get("auroc"),
            )
            cells = [with_interval(values[key], pixel.get(key)) for key in ("auroc", "aupr", "fpr95")]
            near = result["metrics"].get("near_ood", {}).get(method)
            near = "-" if near is None or not np.isfinite(near) else f"{near:.3f}"
            lines.append(f"| {name} | {method} | {' | '.join(cells)} | {case} | {near} |")
    lines.append("\n| model | " + " | ".join(f"Dice {c}" for c in report["classes"]) + " | train s | evaluate s |")
    lines.append("| --- " * (len(report["classes"]) + 3) + "|")
    for name, result in report["models"].items():
        intervals = (result.get("intervals") or {}).get("dice", {})
        dice = " | ".join(with_interval(result["metrics"]["dice"][c], intervals.get(c)) for c in report["classes"])
        timings = result["timings"]
        lines.append(f"| {name} | {dice} | {timings.get('train_s', 'cached')} | {timings.get('evaluate_s', '-')} |")
        if "dice_argmax" in result["metrics"]:
            # the segmentation before the calibrated hysteresis (per_case.csv: dice_argmax_<class>)
            plain = " | ".join(
                with_interval(result["metrics"]["dice_argmax"][c], intervals.get(f"argmax_{c}"))
                for c in report["classes"]
            )
            lines.append(f"| {name}, plain argmax | {plain} | | |")
    lines.append(
        "\nnear-OOD AUROC: the pixel AUROC of the OOD-lesion voxels against the inlier tumour voxels alone (is an "
        "unseen type told apart from the known ones?), without an interval."
    )
    lines.extend(lead_table(report))
    lines.extend(by_ood_type_table(report))
    lines.extend(by_ood_size_table(report))
    lines.append("\nTargets for c with MaxQuery (met?):")
    for key, (value, met) in report["targets"].items():
        lines.append(f"- {key}: {value:.3f} ({'yes' if met else 'no'})")
    return "\n".join(lines) + "\n"


def lead_table(report: dict) -> list[str]:
    """Markdown lines: the paired lead of MaxQuery over every other score of the same model (``intervals["lead"]``
    of :func:`evaluation_intervals`); empty if no model has one."""
    rows = []
    for name, result in report["models"].items():
        lead = (result.get("intervals") or {}).get("lead")
        if lead:
            rows += lead_table_rows(lead, [name])
    if not rows:
        return []
    return [
        "\nMaxQuery's lead over every other score of the same model, paired: each metric's difference on the same "
        "bootstrap replicates (positive: MaxQuery better; for FPR95 the other's minus MaxQuery's), its 95% interval "
        "and the share of replicates in which MaxQuery is ahead. An interval that holds 0 means the cases do not "
        "tell the two scores apart.\n",
        *lead_table_header(["model"]),
        *rows,
    ]


def by_ood_type_table(report: dict) -> list[str]:
    """Markdown lines: pixel / case AUROC of each OOD lesion type on its own (``metrics.json`` ``by_ood_type``), for
    MaxQuery (and its class-centred form) and each model's best other score (by pooled pixel AUROC); empty if no
    evaluation has the breakdown."""
    columns = []
    for name, result in report["models"].items():
        metrics = result["metrics"]
        if not metrics.get("by_ood_type"):
            continue
        others = [m for m in metrics["pixel_ood"] if m not in MAXQUERY_SCORES]
        picked = [m for m in MAXQUERY_SCORES if m in metrics["pixel_ood"]] + (
            [max(others, key=lambda m: metrics["pixel_ood"][m]["auroc"])] if others else []
        )
        columns += [(name, method) for method in picked]
    if not columns:
        return []
    types = next(r["metrics"]["by_ood_type"] for r in report["models"].values() if r["metrics"].get("by_ood_type"))
    lines = [
        "\nEach OOD lesion type on its own: pixel AUROC (its voxels against every non-OOD ROI voxel) / pixel AUROC "
        "against the inlier tumour voxels alone (where evaluated) / case AUROC (the OOD cases holding it against the "
        "inlier cases), for MaxQuery, its class-centred form and each model's best other score.\n",
        "| OOD type | cases | voxels | " + " | ".join(f"{name} {method}" for name, method in columns) + " |",
        "| --- " * (len(columns) + 3) + "|",
    ]

    def cell(pixel: float, near: float | None, case: float) -> str:
        return f"{pixel:.3f}" + (f" / {near:.3f}" if near is not None else "") + f" / {case:.2f}"

    all_cells = []
    for name, method in columns:
        metrics = report["models"][name]["metrics"]
        near = metrics.get("near_ood", {}).get(method)
        all_cells.append(cell(metrics["pixel_ood"][method]["auroc"], near, metrics["case_ood"][method]["auroc"]))
    first = report["models"][columns[0][0]]["metrics"]
    lines.append(
        f"| all OOD types | {first.get('num_cases', {}).get('test_ood', '-')} | "
        f"{first.get('num_roi_voxels', {}).get('ood', '-')} | {' | '.join(all_cells)} |"
    )
    for type_name, counts in types.items():
        cells = []
        for name, method in columns:
            values = report["models"][name]["metrics"]["by_ood_type"].get(type_name)
            if not values:
                cells.append("-")
                continue
            near = values.get("pixel_auroc_vs_inlier_tumours", {}).get(method)
            cells.append(cell(values["pixel_auroc"][method], near, values["case_auroc"][method]))
        lines.append(f"| {type_name} | {counts['cases']} | {counts['voxels']} | {' | '.join(cells)} |")
    return lines


def by_ood_size_table(report: dict) -> list[str]:
    """Markdown lines: case AUROC of the OOD cases of each lesion-size bin (``metrics.json`` ``by_ood_size``), for
    every score of every model; empty if no evaluation has the breakdown."""
    models = {
        name: r["metrics"]["by_ood_size"] for name, r in report["models"].items() if r["metrics"].get("by_ood_size")
    }
    if not models:
        return []
    columns = [(name, method) for name, bins in models.items() for method in bins[0]["case_auroc"]]
    lines = [
        "\nCase AUROC of the OOD cases of each size (their OOD voxels on the model grid) against all inlier cases.\n",
        "| OOD voxels | " + " | ".join(f"{name} {method}" for name, method in columns) + " |",
        "| --- " * (len(columns) + 1) + "|",
    ]
    for i, first in enumerate(next(iter(models.values()))):
        low, high = first["min_voxels"], first["max_voxels"]
        size = f"{low} and more" if high is None else (f"under {high}" if low == 0 else f"{low} to {high - 1}")
        cells = [f"{models[name][i]['case_auroc'][method]:.2f}" for name, method in columns]
        lines.append(f"| {size} ({first['cases']} cases) | {' | '.join(cells)} |")
    return lines


def plot_curves(names: list[str], work: Path, out: Path) -> None:
    """ROC and precision-recall curves of every score of every model."""
    styles = {
        "maxquery": "-",
        CLASS_CENTRED_SCORE: "--",
        "msp": ":",
        "entropy": "--",
        "rba": "-.",
        "max_logit": (0, (1, 4)),
        "energy": "-",
    }
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(12, 5))
    for colour, name in enumerate(names):
        scores = np.load(work / name / "evaluation" / "roi_scores.npz")
        is_ood = scores["is_ood"]
        for method in scores.files:
            if method in ROI_VOXEL_KEYS:
                continue
            line = {"color": f"C{colour}", "linestyle": styles.get(method, ":"), "label": f"{name} {method}"}
            line["linewidth"] = 2.0 if method in MAXQUERY_SCORES else 1.0
            fpr, tpr, _ = roc_curve(is_ood, scores[method])
            precision, recall, _ = precision_recall_curve(is_ood, scores[method])
            roc_ax.plot(fpr, tpr, **line)
            pr_ax.plot(recall, precision, **line)
    roc_ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title="pixel-level ROC (ROI voxels)")
    pr_ax.set(xlabel="recall", ylabel="precision", title="pixel-level precision-recall (OOD positive)")
    pr_ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "roc_pr.png", dpi=110)
    plt.close(fig)


def plot_cases(dataset: Path, work: Path, out: Path, common: dict, num_cases: int = 3) -> None:
    """Image, ground truth, segmentation and MaxQuery map of a few OOD cases, through ``configs/inference.json``."""
    cases = load_datalist(dataset, "test_ood")[:num_cases]
    pred_dir = work / "c_mask_transformer_qd" / "inference"
    inference_ids = flatten_configs("inference.json", root=ROOT)
    overrides = {
        **{key: value for key, value in common.items() if key.split("#")[0] in inference_ids},
        "ckpt_dir": str(work / "c_mask_transformer_qd" / "models"),
        "localiser_ckpt_path": str(work / "localiser" / "localiser.pt"),
        "output_dir": str(pred_dir),
        "datalist": [{"image": c["image"]} for c in cases],
    }
    bundle_run(["inference.json"], overrides)
    ood_values = ood_label_values(dataset)
    fig, axes = plt.subplots(len(cases), 4, figsize=(12, 3 * len(cases)), squeeze=False)
    for row, case in zip(axes, cases, strict=True):
        name = Path(case["image"]).name[: -len(".nii.gz")]
        image = nib.load(case["image"]).get_fdata()
        label = nib.load(case["label"]).get_fdata()
        seg = nib.load(pred_dir / f"{name}_seg.nii.gz").get_fdata()
        anomaly = nib.load(pred_dir / f"{name}_ood.nii.gz").get_fdata()
        z = int(np.argmax(np.isin(label, ood_values).sum(axis=(0, 1))))
        panels = [
            (image, "image", "gray", (-160, 240)),
            (label, "ground truth (OOD >= 4)", "tab10", (0, 9)),
            (seg, "segmentation", "tab10", (0, 9)),
            (anomaly, "MaxQuery A", "magma", None),
        ]
        for ax, (volume, title, cmap, limits) in zip(row, panels, strict=True):
            vmin, vmax = limits if limits else np.percentile(anomaly[..., z], [1, 99.5])
            ax.imshow(volume[..., z].T, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_title(f"{name}: {title}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "ood_cases.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", default=str(ROOT / "data" / "phantom_pancreas"))
    parser.add_argument("--work_dir", default=str(ROOT / "runs" / "ood_benchmark"), help="checkpoints and logs")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmark"), help="where the report goes")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(DEFAULT_VARIANTS))
    parser.add_argument("--max_epochs", type=int, help="training epochs (default: configs/train.json)")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse cached checkpoints (and evaluations newer than them, the configs and the code) in --work_dir",
    )
    parser.add_argument("--parallel", action="store_true", help="one process per variant, all at once")
    parser.add_argument("--train_seconds", type=float, help="with --parallel: fit max_epochs to this training time")
    parser.add_argument("--report_only", action="store_true", help="report the evaluations in --work_dir")
    parser.add_argument(
        "--reference",
        help="an earlier results.json: a compared model left out of --variants is taken from it (metrics, intervals)",
    )
    parser.add_argument("--train_only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args, extra = parser.parse_known_args(argv)
    started = time.perf_counter()
    phantom = json.loads((ROOT / "configs" / "train.json").read_text())["phantom"]
    default_dir = ROOT / "data" / "phantom_pancreas"
    dataset = Path(ensure_dataset(args.dataset_dir, phantom if Path(args.dataset_dir) == default_dir else None))
    work, out = Path(args.work_dir), Path(args.out)
    overrides = parse_overrides(extra)
    common = {"bundle_root": str(ROOT), "dataset_dir": str(dataset), **overrides}
    if not args.report_only and not args.child:
        localiser = train_localiser(work, common, args.reuse)
        extra = [*extra, "--localiser_ckpt_path", str(localiser)]  # the children share it
        common["localiser_ckpt_path"] = str(localiser)
    if args.child:
        for name in args.variants:
            train_and_evaluate(name, work, common, args.max_epochs, args.reuse, args.train_only)
        return 0
    missing = [name for name in REQUIRED if name not in args.variants]
    referenced = reference_results(Path(args.reference), missing) if args.reference else {}
    missing = [name for name in missing if name not in referenced]
    if missing:
        parser.error(f"the report compares against {', '.join(missing)}: add it to --variants.")
    if args.train_seconds and not args.parallel:
        parser.error("--train_seconds fits the epochs of concurrent runs: add --parallel.")

    if args.train_seconds and not args.report_only:
        default_interval = json.loads((ROOT / "configs" / "train.json").read_text())["val_interval"]
        args.max_epochs = fit_epochs_to_budget(args, extra, work, int(overrides.get("val_interval", default_interval)))
    elif not (args.report_only or args.reuse):
        (work / "epoch_fit.json").unlink(missing_ok=True)  # from an earlier run, no longer describes this one
    if args.parallel and not args.report_only:
        commands = {
            name: child_command(name, args, extra, work_dir=work, max_epochs=args.max_epochs, reuse=args.reuse)
            for name in args.variants
        }
        run_concurrently(commands, work)
    elif not args.report_only:
        for name in args.variants:
            train_and_evaluate(name, work, common, args.max_epochs, args.reuse)

    results = {name: load_result(name, work) for name in args.variants}
    for name, result in results.items():
        result["intervals"] = bootstrap_intervals(work, name)
    results = {**referenced, **results}
    out.mkdir(parents=True, exist_ok=True)
    ours = results["c_mask_transformer_qd"]["metrics"]
    maxquery = {**ours["pixel_ood"]["maxquery"], "case_auroc": ours["case_ood"]["maxquery"]["auroc"]}
    best = best_baseline(results)
    targets = {f"{key} >= {goal}": (maxquery[key], maxquery[key] >= goal) for key, goal in TARGETS.items()}
    targets[f"auroc margin over best baseline (>= +{AUROC_MARGIN})"] = (
        maxquery["auroc"] - best["auroc"],
        maxquery["auroc"] - best["auroc"] >= AUROC_MARGIN,
    )
    for key, goal in GOALS.items():
        met = maxquery[key] <= goal if key == "fpr95" else maxquery[key] >= goal
        targets[f"standing goal {key} {'<=' if key == 'fpr95' else '>='} {goal}"] = (maxquery[key], met)
    tumour_classes = [c for c in ours["dice"] if c != list(ours["dice"])[0]]
    dice_gap = float(np.nanmin([ours["dice"][c] - results["a_dynunet"]["metrics"]["dice"][c] for c in tumour_classes]))
    targets["tumour Dice of c minus a (>= 0)"] = (dice_gap, dice_gap >= 0)
    lowest_dice = float(np.nanmin([ours["dice"][c] for c in tumour_classes]))
    targets["lowest tumour Dice of c (>= 0.5)"] = (lowest_dice, lowest_dice >= 0.5)

    epoch_fit_path = work / "epoch_fit.json"
    plot_curves(args.variants, work, out)
    plot_cases(dataset, work, out, common)
    report = {
        "machine": machine(),
        "seeds": {"training": SEED, "phantom": phantom_seed(dataset)},
        "settings": {
            "max_epochs": args.max_epochs,
            "parallel": args.parallel,
            "epoch_fit": json.loads(epoch_fit_path.read_text()) if epoch_fit_path.is_file() else None,
            "overrides": overrides,
            "dataset": str(dataset.relative_to(ROOT)) if dataset.is_relative_to(ROOT) else str(dataset),
        },
        "classes": list(ours["dice"]),
        "models": results,
        "best_baseline": best,
        "targets": targets,
        "total_s": round(time.perf_counter() - started, 1),
    }
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
