"""Overrides that shrink any preset to the smoke-test model of the test suite (and of
tools/pipeline_check.py): a 1-block, 32-wide ViT with small heads and two local crops, seconds per
step on a CPU."""

TINY_MODEL_OVERRIDES: tuple[str, ...] = (
    "model.depth=1", "model.embed_dim=32", "model.num_heads=2", "model.out_dim=64", "model.patch_out_dim=64",
    "model.head_hidden_dim=32", "model.head_bottleneck_dim=16", "data.local_crops_number=2")
# ... and 16/8-px crops of 4-px patches for it (4 x 4 and 2 x 2 patches).
TINY_CROP_OVERRIDES: tuple[str, ...] = ("data.global_crops_size=16", "data.local_crops_size=8", "model.patch_size=4")
