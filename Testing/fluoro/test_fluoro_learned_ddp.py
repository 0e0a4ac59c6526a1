"""torchrun / DistributedDataParallel for ``--kind ppc`` and ``--kind similarity``: two CPU
processes with the gloo backend train a few steps; the replicas stay equal, they moved
away from the initial weights, and the ranks drew different samples.

SYNTHETIC: DRRs of the small phantom of the learned-method tests.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from FluoroRegLib.learned.model_file import load_model_file

HERE = Path(__file__).resolve().parent

WORKER = textwrap.dedent("""
    import os
    import sys
    import torch
    sys.path.insert(0, {here!r})
    torch.set_num_threads(1)
    from test_fluoro_learned import CAMERA, nominal_of, phantom, small_config
    from FluoroRegLib.learned.train import train_model

    kind, out = sys.argv[1], sys.argv[2]
    hu, m = phantom()
    nominal, _ = nominal_of(hu, m)
    extra = {{"similarity": {{"channels": 4, "width": 8, "lm_every": 2, "lm_steps": 1}},
             "ppc": {{"points": 64, "edge_max_points": 600, "search_px": 8}}}}[kind]
    cfg = small_config(kind=kind, max_steps=3, batch_size=2, n_val=2, width=4, lr=1e-2,
                       extra=extra, save_replicas=True, command="ddp test")
    msgs = []
    train_model(hu, m, CAMERA, nominal, cfg, out, progress=lambda f, msg: msgs.append(msg))
    with open(out + ".rank" + os.environ["RANK"] + ".log", "w") as f:
        f.write("\\n".join(msg for msg in msgs if msg.startswith("step")))
""")


def _initial_state(kind, arch):
    """The weights before training (the training seeds torch with 0 just before it builds
    the network)."""
    torch.manual_seed(0)
    if kind == "similarity":
        from FluoroRegLib.learned.spherical import SphericalFeatureNet

        return SphericalFeatureNet(**arch).state_dict()
    from FluoroRegLib.learned.ppc_net import LearnedPPC

    return LearnedPPC(**arch).state_dict()


@pytest.mark.parametrize("kind", ["ppc", "similarity"])
def test_ddp_two_cpu_processes_keep_replicas_equal(kind, tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(here=str(HERE)))
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    port = 29500 + (os.getpid() + (0 if kind == "ppc" else 7)) % 1000
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(port), str(worker), kind, str(tmp_path / "m.pt")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = load_model_file(tmp_path / "m.pt.rank0.pt")
    r1 = load_model_file(tmp_path / "m.pt.rank1.pt")
    written = load_model_file(tmp_path / "m.pt")  # rank 0 writes the model
    assert r0["kind"] == kind and r0["training"]["world_size"] == 2
    assert r0["training"]["steps"] == r1["training"]["steps"] == 3
    # the ranks drew their own samples: their losses differ (so equal weights are DDP's doing)
    logs = [(tmp_path / f"m.pt.rank{r}.log").read_text().splitlines() for r in (0, 1)]
    assert len(logs[0]) == len(logs[1]) == 3 and logs[0] != logs[1], logs
    init = _initial_state(kind, r0["arch"])
    changed = False
    for k, v in r0["state_dict"].items():
        torch.testing.assert_close(v, r1["state_dict"][k], rtol=0, atol=0)
        torch.testing.assert_close(v, written["state_dict"][k], rtol=0, atol=0)
        changed |= not torch.equal(v, init[k])
    assert changed  # the replicas trained (moved away from the initial weights)
