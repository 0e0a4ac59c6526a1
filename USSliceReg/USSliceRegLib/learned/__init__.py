"""DeepRS2V for USSliceReg: a small network that regresses the rigid correction of a 2D
ultrasound frame's pose against one 3D US volume in one pass, trained per volume.

Data flow (one file each):

``geometry``  the fan frame of a pose, the network's sampling grids (frame plane, volume
              cube), sampling of frames and of the volume on them, the volume fingerprint;
``data``      training samples made from the volume (and a tracked sweep when given):
              plausible probe poses, perturbations, fan mask, speckle, gain, attenuation;
``network``   the 2D frame encoder, 3D volume encoder, outer-product fusion, 3D decoder
              and the 6D-rotation + translation head;
``losses``    masked LNCC of the frame and the slice at the predicted pose, translation
              MSE, geodesic rotation error;
``model_io``  the model file (weights + volume fingerprint + command + seed + range +
              format version) and its checks;
``train``     the training loop (checkpoints, resume, cancel, progress, time budget,
              DistributedDataParallel under ``torchrun``);
``infer``     :class:`~.infer.DeepRegistrar` and the ``deep`` / ``deep+lncc`` methods;
``benchmark`` deep, deep+lncc, lncc and sitk on the same held-out frames and starts.

See ``docs/us.md`` ("Learned method") for the frames and the exact composition.
"""
