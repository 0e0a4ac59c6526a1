"""Learned registration of a liver mesh to a laparoscopic frame (Land-Reg style).

Stage I: a point encoder (PointNet++-style) and an image encoder (small ResNet) with
cross-modal latent alignment predict per-pixel and per-point descriptors, an
overlap / landmark detector with an uncertainty head; mutual-nearest-neighbour cosine
matching gives 2D-3D correspondences, EPnP + RANSAC the pose, the silhouette refinement
of :mod:`..silhouette` polishes it. Stage II: a small deforming network optimised at run
time (rendered-mask Dice, reprojection of the matched pairs, local isometry).

Files, along the data flow:

- :mod:`.data`     SYNTHETIC training / test frames rendered here (shapes, cameras,
                   appearance, ground truth);
- :mod:`.net`      the Stage I network and its losses;
- :mod:`.modelfile` model files (kind, format version, training record), bundled model;
- :mod:`.train`    the training loop (checkpoints, resume, DDP under ``torchrun``);
- :mod:`.infer`    inference: correspondences, pose, quality, ``register_learned``;
- :mod:`.stage2`   the Stage II run-time deformation.
"""
