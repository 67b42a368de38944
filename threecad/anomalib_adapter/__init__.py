"""anomalib's image models on threecad's harness: `threecad bench --method anomalib:Patchcore`.

The optional extra `threecad[anomalib]` installs anomalib; this package registers the family
`anomalib` (entry-point group `threecad.method_families`), whose members are the installed
anomalib's image models by class name. Each runs through threecad's harness unchanged (its
metrics, protocols, pictures, resume, records and leaderboard) while the model keeps what
anomalib gives it: its constructor's settings (`--set`), its pre-processor's transforms, its
trainer arguments, optimiser and schedule (Lightning), and its raw maps and scores.

Modules: `family` (the members), `config` (a model's constructor as a config, presets),
`weights` (pretrained backbones from threecad's offline files), `batches` (loader batches as
anomalib's ImageBatch), `training` (the Lightning fit), `method` (the Method contract).
Nothing here imports anomalib until a member is asked for.
"""
from threecad.anomalib_adapter.family import AnomalibFamily

family = AnomalibFamily()
