"""`threecad predict`: a trained category of a run on new images (threecad.inference)."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("predict")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--category", required=True, help="The run's category whose model scores the images (ACC, ...).")
@click.option("--images", "folder", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A folder of images (searched recursively), instead of or beside IMAGE arguments.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for maps/, overlays/, predictions.csv and predict.json (new or empty).")
@click.option("--fpr", type=float, default=None,
              help="Decision threshold at this false-positive rate on the run's held-out good training images "
                   "(default 0.01: about 1 good image in 100 called anomalous).")
@click.option("--threshold", type=float, default=None, help="Decision threshold on the image score, instead of --fpr.")
@click.option("--maps", type=click.Choice(["npy", "png16"]), default="npy", show_default=True,
              help="Anomaly maps as float32 .npy, or 16-bit PNG on the scale predict.json records.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Default: the run's batch size.")
def command(run_dir, images, category, folder, out, fpr, threshold, maps, device, batch_size) -> None:
    """Score IMAGE... (or --images DIR) with RUN_DIR's model of --category, exactly as the benchmark
    scored its test images: the method's declared preprocess, predict, post-processing and image score.

    \b
    Example:
      threecad predict runs/patchcore --category ACC --images line7/ --out line7-scores
    Writes per image maps/<name>.npy (or .png) and overlays/<name>.png, and predictions.csv
    (path, score, decision, threshold). Unreadable images are listed and skipped, and the exit
    code is then 1.
    """
    from threecad.errors import ThreecadError
    from threecad.inference import RESULTS_FILE, predict_images
    from threecad.layout import IMAGE_SUFFIXES
    from threecad.saved_run import DEFAULT_FPR, image_files, load_run

    if threshold is not None and fpr is not None:
        raise ThreecadError("--threshold and --fpr both set a threshold: pass one")
    paths = [Path(p) for p in images]
    if folder is not None:
        if not folder.is_dir():
            raise ThreecadError(f"--images {folder}: no such folder")
        found = image_files(folder, IMAGE_SUFFIXES)
        if not found:
            raise ThreecadError(f"--images {folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in it")
        paths += found
    if not paths:
        raise ThreecadError("no images: pass IMAGE files or --images DIR")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ThreecadError(f"--out {out} is not a new or empty folder (predict never mixes its files with others)")
    run = load_run(run_dir)
    model = run.model(category, device=device)
    if threshold is not None:
        how = "--threshold, given"
    else:
        fpr = DEFAULT_FPR if fpr is None else fpr
        threshold = model.threshold(fpr)
        held_out = model.record["threshold_calibration"]
        how = (f"false-positive rate {fpr:g} on the run's {held_out['images']} held-out good training images "
               "(validation split)")
    out.mkdir(parents=True, exist_ok=True)
    outcome = predict_images(model, paths, out, threshold=threshold, how=how,
                             folder=folder if not images else None, maps=maps, batch_size=batch_size,
                             echo=click.echo)
    for path, why in outcome.unreadable:
        click.echo(f"skipped {path}: {why}", err=True)
    click.echo(f"{run.method} {category}: {outcome.scored} images scored, {outcome.anomalous} anomalous "
               f"(threshold {threshold:.6g}: {how}); {out / RESULTS_FILE}"
               + (f"; {len(outcome.unreadable)} unreadable, skipped" if outcome.unreadable else ""))
    raise SystemExit(1 if outcome.unreadable else 0)
