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

Landmark model (kind ``"landmarks"``, the default of ``--method learned``): the 2D
landmarks are learned per pixel, the 3D side stays geometric:

- :mod:`.landmarks_data`  SYNTHETIC frames with per-pixel ridge / ligament / silhouette maps;
- :mod:`.landmarks_net`   the compact U-Net and its loss;
- :mod:`.landmarks_train` training (``train --stage 1 --kind landmarks``);
- :mod:`.landmarks_infer` registration: maps -> global search (:mod:`.landmarks_search`)
  -> image ICP correspondences (:mod:`.landmarks_icp`) -> EPnP + RANSAC check ->
  refinement.
"""
