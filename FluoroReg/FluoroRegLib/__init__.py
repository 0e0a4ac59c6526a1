"""Qt-free logic of the FluoroReg module: CT to X-ray (fluoroscopy) 2D/3D registration.

- ``geometry``   X-ray camera helpers (core ``XRayCamera``), detector points, C-arm poses
- ``drr``        differentiable DRR renderer (trilinear ray marching and exact Siddon)
- ``simulate``   synthetic X-rays from a real CT at known poses, landmarks, start poses
- ``refine``     intensity-based registration (NCC / gradient NCC, LM or Adam, pyramid,
                 one or several views); error measures (mTRE, mPE, mRPD, double geodesic)
- ``ppc``        point-to-plane correspondence registration
- ``multiview``  per-view registration + cross-view consistency + joint refinement
- ``xray_io``    X-ray images (DICOM, NRRD/MHA/PNG + geometry JSON, raw + negative log)
- ``logic``      entry points for the Slicer module and the CLI; the method registry
- ``cli``        ``surgreg fluoro register|simulate|bench``; ``demo``: ``surgreg demo`` part
- ``learned``    learned methods (separate issue)

Frames: ``ct_to_camera`` maps CT RAS mm to the X-ray camera (origin at the source, +z to
the detector, +x along image columns, +y along image rows).
"""
