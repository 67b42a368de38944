"""RUN/report.html: one static page a person opens to see what a benchmark run did.

Why: results.json is for programs and results.md for a README; neither shows how the scores
are distributed, how training went or which images fooled the model. The page gathers, from
the run's own files only, the metrics table, each category's ROC and PRO curves (computed
from the stored predictions, threecad.report.curves), its loss curve and hardest images, the
config, the method's model card, hardware, versions, timings and the leaderboard variant
`threecad leaderboard submit` would give it. Anything that cannot be shown (an unreadable
dataset root, a card that no longer builds, an unfinished run) is said on the page; only a
folder that is not a run is an error.

Modules: curves (the curve points), figures (PNG data URIs), page (the HTML pieces).
"""
from __future__ import annotations

from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

from threecad.errors import ThreecadError
from threecad.fsutil import atomic_write_bytes, check_writable
from threecad.harness.losscurves import loss_figure, read_loss_csv
from threecad.harness.rundir import PAPER_CAVEAT, UNIFIED_NOTE, RunDir
from threecad.leaderboard.names import display_name
from threecad.leaderboard.runs import RESULTS_FILE, rows_from_run, variant_of
from threecad.leaderboard.schema import DATASET_LABELS, LeaderboardError
from threecad.report import page
from threecad.report.curves import GroundTruth, category_curves
from threecad.report.figures import curves_figure, figure_uri, png_file_uri

REPORT_FILE = "report.html"
TRACEBACK_LINES = 30  # the end of a failed category's traceback shown on the page


def report_file(run_path: str | Path) -> Path:
    return Path(run_path) / REPORT_FILE


def write_report(run_path: str | Path, out: str | Path | None = None, root: str | Path | None = None) -> Path:
    """Write the page (default RUN/report.html) atomically; returns its path.

    RUN/report.html is entered in the run's manifest before it is written, as every run file
    (threecad.harness.runmanifest); a run made before runs kept a manifest does not get one.
    """
    run = RunDir(run_path)
    _spec(run)  # a folder that is not a run is said before anything else
    target = Path(out) if out is not None else report_file(run.path)
    check_writable(target)
    data = render_report(run.path, root).encode("utf-8")
    if target.resolve() == report_file(run.path).resolve() and run.manifest.path.is_file():
        run.manifest.update(coming={report_file(run.path): data})
    atomic_write_bytes(target, data)
    return target


def render_report(run_path: str | Path, root: str | Path | None = None) -> str:
    """The page's HTML. `root`: the dataset root for the masks (default: the one run.json records)."""
    run = RunDir(run_path)
    spec = _spec(run)
    results = run.read_results()
    data = results if results is not None else {**spec, "categories": {}, "mean": {}}
    categories: dict[str, dict[str, Any]] = data.get("categories") or {}
    dataset = data.get("dataset") or {}
    root = root if root is not None else dataset.get("root")
    title = (f"{display_name(str(data['method']))} ({data.get('preset') or 'default'}) on "
             f"{DATASET_LABELS.get(dataset.get('name'), dataset.get('name'))}")
    sections = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="lead">Run <code>{escape(str(data.get("run_id")))}</code>: protocol '
        f'<code>{escape(str(data.get("protocol")))}</code>, setting <code>'
        f'{escape(str(data.get("setting", "per-category")))}</code>, evaluation size {data.get("eval_size")} px, '
        f'device {escape(str(data.get("device")))}; {len(categories)} categor'
        f'{"y" if len(categories) == 1 else "ies"}. Values in percent. Report written '
        f'{datetime.now().astimezone().isoformat(timespec="seconds")}.</p>',
        *_caveats(data, results),
        '<nav><ul><li><a href="#results">Metrics</a></li><li><a href="#leaderboard">Leaderboard entry</a></li>'
        '<li><a href="#categories">Per category</a></li><li><a href="#timings">Timings and memory</a></li>'
        '<li><a href="#config">Config</a></li><li><a href="#card">Model card</a></li>'
        '<li><a href="#environment">Hardware and versions</a></li></ul></nav>',
        _metrics_section(categories, data.get("mean") or {}),
        _leaderboard_section(run.path, data),
        _categories_section(run.path, data, categories, root),
        _timings_section(data, categories),
        _config_section(data),
        _card_section(data),
        _environment_section(data),
    ]
    return page.document(f"threecad report: {data.get('run_id')}", sections)


def _spec(run: RunDir) -> dict[str, Any]:
    spec = run.read_spec() if run.path.is_dir() else None
    if spec is None:
        raise ThreecadError(f"{run.path} is not a run directory (no run.json); pass the --out folder of "
                            "`threecad bench`")
    return spec


def _caveats(data: dict[str, Any], results: dict[str, Any] | None) -> list[str]:
    out = []
    if results is None or not results.get("finished"):
        out.append("This run is unfinished: it was interrupted or is still going. The page shows the categories "
                   "that finished; `threecad bench --resume` completes it.")
    if data.get("protocol") == "3cad-paper":
        out.append(PAPER_CAVEAT)
    if data.get("setting") == "unified":
        out.append(UNIFIED_NOTE.format(categories=", ".join(data.get("unified_categories")
                                                            or data.get("categories") or [])))
    return [f'<p class="caveat">{escape(text)}</p>' for text in out]


def _metrics_section(categories: dict[str, dict[str, Any]], mean: dict[str, Any]) -> str:
    notes = [f"{abbr}: {r['notes']}" for abbr, r in categories.items() if r.get("notes")]
    return ('<section id="results"><h2>Metrics</h2>'
            + (page.metrics_table(categories, mean) if categories else page.note("No category has finished yet."))
            + "".join(page.note(n) for n in notes)
            + page.note("Mean over the finished categories, as results.json. Hover a value for its full precision.")
            + "</section>")


def _leaderboard_section(run_path: Path, data: dict[str, Any]) -> str:
    """The entry `leaderboard submit` would make (its own functions), or why it would refuse the run."""
    method = display_name(str(data.get("method")))
    try:
        rows = rows_from_run(run_path)
    except LeaderboardError as exc:
        try:
            variant = variant_of(run_path / RESULTS_FILE, data, data.get("preset") or "default",
                                 data.get("categories") or {})
        except LeaderboardError as why:
            variant = f"(none: {why})"
        return ('<section id="leaderboard"><h2>Leaderboard entry</h2>'
                f"<p>As it stands, <code>threecad leaderboard submit</code> would refuse this run: "
                f"{escape(str(exc))}</p><p>Once it can be submitted, it would be entered as <strong>"
                f"{escape(method)}</strong>, variant <code>{escape(variant)}</code>.</p></section>")
    first = rows.rows.iloc[0]
    return ('<section id="leaderboard"><h2>Leaderboard entry</h2>'
            f"<p><code>threecad leaderboard submit {escape(str(run_path))}</code> would enter it as <strong>"
            f"{escape(str(first['method']))}</strong>, variant <code>{escape(str(first['variant']))}</code>, "
            f"{len(rows.rows)} rows, evidence <code>claimed</code> (with <code>--root</code> the numbers are "
            "computed again from the stored predictions).</p>"
            + "".join(page.note(n) for n in rows.notes) + "</section>")


def _categories_section(run_path: Path, data: dict[str, Any], categories: dict[str, dict[str, Any]],
                        root: str | Path | None) -> str:
    truth = GroundTruth(root)
    shown_losses: dict[str, str] = {}  # a loss curve shared by categories (one unified fit) is shown once
    parts = [_category(run_path, data, abbr, record, truth, shown_losses) for abbr, record in categories.items()]
    return ('<section id="categories"><h2>Per category</h2>'
            + "".join(parts or ["<p>No category has finished yet.</p>"]) + "</section>")


def _category(run_path: Path, data: dict[str, Any], abbr: str, record: dict[str, Any], truth: GroundTruth,
              shown_losses: dict[str, str]) -> str:
    head = f'<section class="category" id="cat-{escape(abbr)}"><h3>{escape(abbr)}</h3>'
    if record.get("status") != "ok":
        return (head + f'<p class="failed">Failed: {escape(str(record.get("error", "unknown error")))}</p>'
                + _traceback(run_path, record) + "</section>")
    out = [head, "<h4>ROC and PRO curves (from the stored predictions)</h4>"]
    paper = data.get("protocol") == "3cad-paper"
    found = category_curves(run_path, record, str(data.get("protocol")), abbr, truth)
    fig = curves_figure(found, f"{display_name(str(data.get('method')))} on {abbr}", paper)
    if fig is not None:
        out.append(page.image(figure_uri(fig), f"{abbr}: ROC and PRO curves"))
    out += [page.note(n) for n in found.notes]
    if paper and found.pro is not None:
        out.append(page.note("The PRO curve is MVTec AD's (every pixel of every image); the AU-PRO in the table is "
                             "the 3cad-paper one (per defective image)."))
    out.append("<h4>Hardest test images</h4>")
    picture = record.get("picture")
    uri, why = png_file_uri(run_path / picture) if picture else (None, "the run drew no picture (--pictures 0)")
    out.append(page.image(uri, f"{abbr}: highest-scored good and lowest-scored defective test images") if uri
               else page.note(why))
    out.append("<h4>Training loss</h4>")
    out.append(_loss_curve(run_path, data, abbr, record, shown_losses))
    return "".join(out) + "</section>"


def _loss_curve(run_path: Path, data: dict[str, Any], abbr: str, record: dict[str, Any],
                shown_losses: dict[str, str]) -> str:
    """The run's loss-curve PNG; drawn from losses/<ABBR>.csv when the run drew none (--pictures 0)."""
    csv, png = record.get("losses"), record.get("loss_curve")
    if not csv and not png:
        return page.note(f"No loss history: {display_name(str(data.get('method')))} does not train in epochs.")
    key = str(png or csv)
    if key in shown_losses:
        return page.note(f"The shared fit's loss curve is shown under {shown_losses[key]}.")
    shown_losses[key] = abbr
    uri, why = png_file_uri(run_path / png) if png else (None, "")
    if uri is None and csv:
        try:
            uri = figure_uri(loss_figure(read_loss_csv(run_path / csv), f"{data.get('method')} on {abbr}: "
                                         "loss per epoch"))
        except (OSError, ThreecadError, ValueError) as exc:
            why = f"{csv} cannot be read ({exc})"
    return page.image(uri, f"{abbr}: loss per epoch") if uri else page.note(why)


def _traceback(run_path: Path, record: dict[str, Any]) -> str:
    name = record.get("traceback")
    try:
        lines = (run_path / name).read_text(encoding="utf-8", errors="replace").splitlines() if name else []
    except OSError:
        lines = []
    if not lines:
        return ""
    return (f'<p class="note">The end of {escape(name)}:</p><pre>'
            + escape("\n".join(lines[-TRACEBACK_LINES:])) + "</pre>")


def _timings_section(data: dict[str, Any], categories: dict[str, dict[str, Any]]) -> str:
    started, finished = data.get("started"), data.get("finished")
    span = ""
    try:
        seconds = (datetime.fromisoformat(str(finished).replace("Z", "+00:00"))
                   - datetime.fromisoformat(str(started).replace("Z", "+00:00"))).total_seconds()
        span = f" ({seconds:,.0f} s in all)"
    except ValueError:
        pass
    return ('<section id="timings"><h2>Timings and memory</h2>'
            f"<p>Started {escape(str(started))}, finished {escape(str(finished or 'not yet'))}{span}.</p>"
            + (page.timings_table(categories) if categories else "")
            + page.note("fit s: the fit's wall time (a unified run's one shared fit); test images/s: inference "
                        "throughput after a warm-up batch; train, val, test: images.")
            + "</section>")


def _config_section(data: dict[str, Any]) -> str:
    config = data.get("config") or {}
    overrides = data.get("overrides") or {}
    return ('<section id="config"><h2>Config</h2>'
            f"<p>Preset <code>{escape(str(data.get('preset')))}</code>, seed {data.get('seed')}; "
            "fields set with <code>--set</code> in bold.</p>"
            + page.key_values(config.items(), marked=overrides) + "</section>")


def _card_section(data: dict[str, Any]) -> str:
    """The method's card as the current code builds it from the run's method, preset and overrides."""
    from threecad.model_card import model_card
    from threecad.registry import load_method

    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in (data.get("overrides") or {}).items()}
    head = '<section id="card"><h2>Model card</h2>'
    try:
        card = model_card(load_method(str(data.get("method"))), data.get("preset"), overrides)
    except Exception as exc:  # noqa: BLE001 - a card that no longer builds is said, not raised
        why = escape(f"{type(exc).__name__}: {exc}")
        return head + f'<p class="failed">The model card cannot be built: {why}</p></section>'
    differ = sorted(k for k, v in card["config"].items()
                    if k in (data.get("config") or {}) and page.text(v) != page.text(data["config"][k]))
    warn = page.note(f"The current code builds a different config than the run recorded ({', '.join(differ)}): "
                     "the card describes today's method.") if differ else ""
    return head + warn + page.model_card(card) + "</section>"


def _environment_section(data: dict[str, Any]) -> str:
    versions = data.get("versions") or {}
    pairs = [("hardware", data.get("hardware", "not recorded")), ("device", data.get("device")),
             ("code revision", data.get("code_revision", "not recorded")),
             *((f"{name} version", v) for name, v in versions.items()),
             ("dataset root", (data.get("dataset") or {}).get("root")),
             ("dataset fingerprint", (data.get("dataset") or {}).get("fingerprint"))]
    return '<section id="environment"><h2>Hardware and versions</h2>' + page.key_values(pairs) + "</section>"
