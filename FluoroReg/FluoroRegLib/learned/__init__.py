"""Learned FluoroReg methods, trained per patient on DRRs of that CT.

- :mod:`.sampling`: training poses around the nominal view (``Delta @ nominal``), batched
  DRRs, domain randomisation;
- :mod:`.regressor`: the pose regressor (small CNN, 6D rotation, SE(3) geodesic loss);
- :mod:`.train`: ``surgreg fluoro train`` (time budget, checkpoints, resume, DDP);
- :mod:`.model_file`: model files, CT/detector fingerprints, refusal of foreign models;
- :mod:`.register`: registration from the nominal view (regressor start + refinement);
  :mod:`.starts`: what the register paths share (regressor starts, the nominal C-arm
  motion to the other views, method names), so they do not import each other;
- :mod:`.bench`: the benchmark from the nominal view; :mod:`.cli`: command-line hooks;
- :mod:`.ppc_net`, :mod:`.ppc_train`, :mod:`.ppc_register`: the learned PPC update (flow
  network + attention + differentiable weighted PPC solve; ``train --kind ppc``);
- :mod:`.spherical`, :mod:`.similarity_train`, :mod:`.sim_register`: the spherical deep
  similarity and its LM (``train --kind similarity``; ``register --model SIM.pt``);
- :mod:`.distributed`: torchrun / DistributedDataParallel helpers of every kind.

Importing this package is cheap (torch is imported by the submodules only).
"""

from __future__ import annotations
