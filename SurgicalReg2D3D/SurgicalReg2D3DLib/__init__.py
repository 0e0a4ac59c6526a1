"""SurgicalReg2D3DLib: the shared, Qt-free core of the SlicerSurgicalReg2D3D extension.

Every registration module (FluoroReg, LiverLaparoReg, USSliceReg) builds on these parts:

- ``errors``     the exception types every bad input is reported with
- ``progress``   progress callbacks and cancellation for long loops
- ``poses``      4x4 rigid transforms, SE(3) exp/log, rotation parametrisations, distances
- ``cameras``    pinhole (+ OpenCV distortion) and X-ray cone-beam cameras
- ``scene``      a real MRML scene with module logics (slicer-core) for use outside Slicer
- ``nodes``      MRML node <-> numpy/torch adapters (volumes, 2D images, models,
                 transforms, markups, sequences, label maps, segmentations)
- ``io``         file reading and writing through MRML storage nodes / SimpleITK
- ``similarity`` NCC, gradient NCC, masked local NCC
- ``optimize``   Levenberg-Marquardt, Adam loop, EPnP + RANSAC
- ``metrics``    mTRE, SMSR, rotation/translation errors, reprojection errors, Dice
- ``device``     CPU/GPU choice and seeding; ``models``: the registry of bundled weights

``poses``, ``cameras`` and ``nodes`` are the public paths; their code lives in
``poses_*``, ``cameras_*`` and ``nodes_*`` (split along the data flow), re-exported.

Heavy dependencies (torch, cv2, vtk/slicer) are imported by the submodules that need them,
so ``import SurgicalReg2D3DLib`` itself is cheap.
"""

__version__ = "0.1.0"
