"""The built-in synthetic 3CAD: a dataset with 3CAD's layout, counts and look, made on demand.

`generate(out, scale=..., seed=...)` writes `<out>/<Folder>/{train,test,ground_truth}`,
a `defect_regions.csv` per category (one row per defect region: image, region, type, a
pixel inside it, its area) and `synthetic.json`. The demo, the tests and the stress
benchmarks run on it; `threecad synth` is its command line.
"""
from threecad.synth.kinds import DEFECT_TYPES, KIND_SIZES
from threecad.synth.plan import ImageJob, plan_category
from threecad.synth.render import MIN_REGION_FRACTION, VISIBLE_AT, render_job
from threecad.synth.writer import (DATASET_NAME, GENERATOR_VERSION, MARKER, SIDECAR,
                                   SIDECAR_COLUMNS, generate)

__all__ = ["DEFECT_TYPES", "KIND_SIZES", "ImageJob", "plan_category", "render_job", "generate",
           "MIN_REGION_FRACTION", "VISIBLE_AT", "DATASET_NAME", "GENERATOR_VERSION", "MARKER",
           "SIDECAR", "SIDECAR_COLUMNS"]
