"""The built-in synthetic 3CAD: a dataset with 3CAD's layout, counts and look, made on demand.

`generate(out, scale=..., seed=...)` writes `<out>/<Folder>/{train,test,ground_truth}`,
a `defect_regions.csv` per category (one row per defect region: image, region, type, a
pixel inside it, its area) and `synthetic.json`. As in 3CAD, each category is one product
in a fixed pose: every image of a category shows the same layout (holes, slots, outline,
pads, teeth), moved, lit and textured a little differently (generator version 2; 3 made
deformations visible dents; 4 put a 16-px floor under every defect region). The
demo, the tests and the stress benchmarks run on it; `threecad synth` is its command line.
"""
from threecad.synth.appearance import category_layout, render_scene
from threecad.synth.kinds import DEFECT_TYPES, KIND_SIZES
from threecad.synth.plan import ImageJob, plan_category
from threecad.synth.render import MIN_REGION_FRACTION, MIN_REGION_PIXELS, VISIBLE_AT, render_job
from threecad.synth.writer import (DATASET_NAME, DEFAULT_MIN_TEST_GOOD, DEFAULT_MIN_TRAIN,
                                   GENERATOR_VERSION, MARKER, SIDECAR, SIDECAR_COLUMNS, generate)

__all__ = ["DEFECT_TYPES", "KIND_SIZES", "ImageJob", "plan_category", "render_job", "render_scene",
           "category_layout", "generate", "MIN_REGION_FRACTION", "MIN_REGION_PIXELS", "VISIBLE_AT", "DATASET_NAME",
           "DEFAULT_MIN_TRAIN", "DEFAULT_MIN_TEST_GOOD", "GENERATOR_VERSION", "MARKER", "SIDECAR",
           "SIDECAR_COLUMNS"]
