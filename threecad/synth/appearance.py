"""Defect-free images of the 8 3CAD parts, one renderer per category.

Each renderer draws the part with vectorised signed-distance geometry and cheap noise
(brushed or sandblasted aluminium, turning marks, chamfer highlights, copper windings,
iron laminations, lighting gradients) and returns a Scene: the image plus where the part
is and how far each pixel lies from the part's outline and from its holes, so that edge
defects (warping) can follow real edges. This module is the face: which renderer draws
which category, its layout cache and the checks every scene passes. The parts are drawn
in cover.py, shells.py, frames.py and stators.py, from scene.py (the Scene and layer
blending), pose.py (per-image placement) and surface.py (light, colour, texture).

A category is one product in a fixed pose, as in 3CAD, where every image of a category
shows the same back, cover or stator. So a renderer's random draws come in two sets
(generator version 2; version 1 drew a new layout for every image, so that no two good
images showed the same product and per-position models such as PaDiM could not work):

- the **layout**: geometry and material (which outline sides are in view and where, the
  corner radius, the openings, the vent slots, the camera bump, the middle frame's rail,
  pockets, screw holes and antenna breaks, the stators' radii and tooth phase, the colour
  from the palette, the brushing axis, the light's direction). It is drawn once per
  category from its own stream (seed, category index, plan._LAYOUT_STREAM), in fractions
  of the image height and width (lengths along one axis in fractions of that side, radii
  in fractions of the short side), so that images of different sizes show the same
  layout once resized to a square. A layout holds every edge its category's defects can
  ask for: the camera cover shows its outline and lens rim, and every shell an outline
  in view and an opening or a slot row, so that good and defective images show the same
  product (warping follows those edges). `render_scene` refuses a scene that lacks one.
- the **variation** of each image, from the image's own stream: a shift of up to 2% of
  each side (1% for round parts, which a fixture centres), a scale change of up to 2%, a
  rotation of up to 2 degrees for round parts (the tooth phase stays the layout's),
  lighting jitter about the category's light, colour jitter (+-4%) and all fine texture
  (grain, brushing, turning marks, windings' wobble, sensor noise).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from threecad.errors import ThreecadError
from threecad.synth.cover import camera_cover, cover_layout
from threecad.synth.frames import (AMF_PALETTE, ANMF_PALETTE, aluminum_middle_frame,
                                   aluminum_new_middle_frame, frame_layout)
from threecad.synth.scene import NO_EDGES, Edges, Scene
from threecad.synth.shells import (AI_PALETTE, ANI_PALETTE, AP_PALETTE, aluminum_ipad, aluminum_new_ipad,
                                   aluminum_pc, shell_layout)
from threecad.synth.stators import copper_stator, iron_stator, stator_layout


@dataclass(frozen=True)
class Renderer:
    """A category's two halves: its layout (drawn once per category) and its image (per image)."""

    layout: Callable[[np.random.Generator], Any]
    draw: Callable[[np.random.Generator, int, int, Any], Scene]


RENDERERS: dict[str, Renderer] = {
    "ACC": Renderer(cover_layout, camera_cover),
    "AI": Renderer(functools.partial(shell_layout, palette=AI_PALETTE, brushed=False, slots=False,
                                     bump=False), aluminum_ipad),
    "AMF": Renderer(functools.partial(frame_layout, palette=AMF_PALETTE, corner=False, antenna=False),
                    aluminum_middle_frame),
    "ANMF": Renderer(functools.partial(frame_layout, palette=ANMF_PALETTE, corner=True, antenna=True),
                     aluminum_new_middle_frame),
    "ANI": Renderer(functools.partial(shell_layout, palette=ANI_PALETTE, brushed=False, slots=False,
                                      bump=True), aluminum_new_ipad),
    "AP": Renderer(functools.partial(shell_layout, palette=AP_PALETTE, brushed=True, slots=True,
                                     bump=False), aluminum_pc),
    "CS": Renderer(functools.partial(stator_layout, yoke=(0.39, 0.42), bore=(0.19, 0.23), light=0.15),
                   copper_stator),
    "IS": Renderer(functools.partial(stator_layout, yoke=(0.37, 0.40), bore=(0.23, 0.26), light=0.12),
                   iron_stator),
}


@functools.lru_cache(maxsize=64)
def category_layout(category: str, stream: tuple[int, ...]) -> Any:
    """The layout of `category` (abbreviation) drawn from the random stream `stream`
    (plan: (seed, category index, _LAYOUT_STREAM)); cached, as every image of the category
    asks for the same one. Layouts are frozen dataclasses: nothing can change a cached one."""
    return RENDERERS[category].layout(np.random.default_rng(np.random.SeedSequence(list(stream))))


def _has_edge(dist: np.ndarray | None, part: np.ndarray) -> bool:
    return dist is not None and bool(((dist > 0) & (dist <= 1.5) & part).any())


def render_scene(category: str, rng: np.random.Generator, h: int, w: int,
                 edges: Edges = NO_EDGES, layout: Any = None) -> Scene:
    """A defect-free image of `category` (abbreviation) at h x w pixels.

    `layout` is the category's (see `category_layout`); without one, a layout is drawn
    from `rng` first, as for a one-off image. `edges` ("outer", "inner") names the edges
    that the image's defects need in view; every layout of a category that has warping
    defects shows both, and a scene without one is an error rather than a silent change.
    """
    renderer = RENDERERS[category]
    scene = renderer.draw(rng, h, w, renderer.layout(rng) if layout is None else layout)
    if scene.image.dtype == np.float32:
        np.clip(scene.image, 0.0, 1.0, out=scene.image)
    else:
        scene.image = np.clip(scene.image, 0.0, 1.0).astype(np.float32)
    if not scene.part.any():  # a degenerate tiny layout: let defects go anywhere
        scene.part = np.ones((h, w), bool)
    for which in sorted(edges):
        if not _has_edge(scene.outer if which == "outer" else scene.inner, scene.part):
            raise ThreecadError(f"the {category} layout shows no {which} edge at {h}x{w} for "
                                f"{which}_warping defects")
    return scene
