"""Dataset statistics: the paper's Table 1 and Figure 3 for any root, measured from the masks.

Why this module exists: the paper's dataset analysis (counts, size ranges, regions and types
per defective image, region size and shape) should be reproducible on the real 3CAD, on
MVTec AD and on the synthetic set, and fast enough to run on 27k images without thinking.

How it is fast: only masks are decoded (image sizes come from the sample table, which read
them from the file headers); each mask is cropped to its non-zero box before labelling; the
per-file result is cached in one sqlite file keyed by path, size and mtime (a changed file
is recomputed), each row with its checksum (a damaged row is recomputed); uncached files are
spread over a process pool.

Conventions, stated once:
- A mask pixel is a defect under threecad.masks' rule (> 127 on the 8-bit scale; colour
  masks by their largest channel; see that module), the same in verify and the Dataset.
  A mask whose size is not its image's is not measured (status "mask_size").
- Regions are 8-connected components (NE = number of components of the mask).
- Area ratio = region pixels / mask pixels (height x width of the mask).
- The rotated bounding rectangle is the minimum-area rectangle around the region's pixel
  *centres* (rotating calipers over the convex-hull edges), each side then lengthened by one
  pixel for the pixels' own extent: a single pixel is 1 x 1 (aspect 1), a one-pixel-wide line
  of n pixels is n x 1 (aspect n), an axis-aligned w x h block exactly w x h, and a digital
  bar rotated by any angle comes out close to its own length and width (pixel corners
  instead would add about 1.4 px to both sides of a 45-degree bar).
  Aspect ratio = long side / short side.
- TE (types per defective image) comes from the per-region labels in
  `<root>/<Folder>/defect_regions.csv` when that sidecar exists, else from the folder name
  (so TE = 1); `te_source` says which.

Modules, one concern each: geometry (hull, rotated rectangle), measure (one mask), cache
(sqlite), pool (many masks), sidecar (region types), tables, report (text and CSV) and
compute (the entry, `compute_stats`).
"""
from threecad.stats.compute import DatasetStats, compute_stats
from threecad.stats.geometry import min_area_rect
from threecad.stats.measure import REGION_FIELDS, MaskResult, analyze_mask, analyze_mask_array
from threecad.stats.pool import analyze_masks
from threecad.stats.report import (format_comparison, format_defect_types, format_summary, te_source_text,
                                   write_tables)
from threecad.stats.sidecar import SIDECAR_COLUMNS, SIDECAR_NAME
from threecad.stats.tables import TABLE1_FIELDS, table1_comparison

__all__ = [
    "DatasetStats", "compute_stats", "min_area_rect", "REGION_FIELDS", "MaskResult", "analyze_mask",
    "analyze_mask_array", "analyze_masks", "format_comparison", "format_defect_types", "format_summary",
    "te_source_text", "write_tables", "SIDECAR_COLUMNS", "SIDECAR_NAME", "TABLE1_FIELDS", "table1_comparison",
]
