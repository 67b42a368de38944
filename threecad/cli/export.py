"""`threecad export`: a trained category of a run as one ONNX or TorchScript graph (threecad.export)."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--category", required=True, help="The run's category whose model to export (ACC, ...).")
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), required=True,
              help="onnx (run it with onnxruntime) or torchscript (torch.jit.load).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The graph's file (new); its description is written beside it as FILE.json.")
def command(run_dir: Path, category: str, fmt: str, out: Path) -> None:
    """Export RUN_DIR's model of --category as one graph, from the preprocessed image to its
    anomaly map and image score, with the method's post-processing inside.

    \b
    Example:
      threecad export runs/patchcore --category ACC --format onnx --out patchcore-acc.onnx
    The input is float32 (N, 3, S, S) in [0, 1]: the image through the method's declared
    preprocess (FILE.json says which), divided by 255, not normalised. The written graph is
    checked against the benchmark's own scoring before it is kept.
    """
    from threecad.export import export_run, sidecar_path
    from threecad.saved_run import load_run

    record = export_run(load_run(run_dir), category, fmt, out)
    check = record["check"]
    weights = [f for f in record["files"] if f != out.name]
    click.echo(f"{record['method']} {category}: {fmt} graph written to {out}"
               + (f" (weights in {', '.join(weights)})" if weights else "")
               + f", described in {sidecar_path(out)}; checked against predict: maps within "
               f"{check['map_max_abs_diff']:.2g} (their range {check['map_range']:.3g}), scores within "
               f"{check['score_max_abs_diff']:.2g}")
