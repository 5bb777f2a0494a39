"""The 3D shapes world: primitives on a ground plane, seen from orbit cameras, scored against ground truth.

scene (objects, views, the scene file, the seeded generator), camera (OpenGL pinhole cameras),
render (ray-cast RGB, z-depth, per-object masks), nerfstudio (transforms.json and depth PNGs),
score (PSNR, SSIM, chromaticity labeller, per-object metrics). Submodules are imported explicitly;
importing this package loads nothing heavy.
"""
