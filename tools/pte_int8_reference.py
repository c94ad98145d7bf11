"""How far the int8 ``.pte`` is from its PT2E reference, against how far quantization moved that reference from fp32.

For each digits-trained model (``RUNS/<model>/best.safetensors``, as ``tools/pte_int8_costs.py`` reads them) whose
int8 ``.pte`` was written to ``PTES/<model>.pte`` by ``litevit.export(model, path, precision="int8",
calibration=DIGITS/train, calibration_images=64)``, the PT2E reference is rebuilt from the same calibration images
(deterministic) and the three outputs are compared on every 5th val image: max relative, RMS relative, agreement.
The ratio ``pte_vs_ref.rms_rel / ref_vs_fp32.rms_rel`` is what ``litevit.deploy.executorch.PTE_INT8_MAX_RATIO``
bounds. Writes JSON lines to stdout.

    OMP_NUM_THREADS=1 .venv/bin/python tools/pte_int8_reference.py levit_128s efficientvit_m0
"""

import json
import sys

import torch

import litevit
from litevit.deploy.executorch import quantize_int8
from litevit.deploy.fuse import fuse
from litevit.deploy.int8 import calibration_files, load_calibration
from litevit.deploy.runtime import ExportedModel
from litevit.weights.loading import model_info

RUNS, DIGITS, PTES = "/tmp/litevit/digits-runs", "/tmp/litevit/digits", "/tmp/litevit/a"  # where the run had them
for name in sys.argv[1:]:
    m = litevit.load(f"{RUNS}/{name}/best.safetensors").eval()
    f = fuse(m).float()
    data = model_info(m).data
    files, held = calibration_files(f"{DIGITS}/train", 64, 32)
    cal = [torch.from_numpy(b) for b in load_calibration(files, data, (64, 64), "x")]
    x = torch.randn(1, 3, 64, 64)
    q, _ = quantize_int8(f, x, cal)
    pte = ExportedModel(f"{PTES}/{name}.pte")
    # val images too
    from litevit.data import eval_transform, image_folder

    val = image_folder(f"{DIGITS}/val", eval_transform(data, (64, 64)))
    imgs = torch.stack([val[i][0] for i in range(0, len(val), 5)]).contiguous()
    with torch.no_grad():
        o = torch.cat([pte(imgs[i : i + 1]) for i in range(len(imgs))])
        r = torch.cat([q(imgs[i : i + 1]) for i in range(len(imgs))])
        fl = f(imgs)

    def met(a, b):
        d = a - b
        bc = b - b.mean(0)
        return dict(
            maxrel=(d.abs().max() / b.abs().max()).item(),
            rms_rel=(d.norm() / b.norm()).item(),
            rms_centred=(d.norm() / bc.norm()).item(),
            agree=(a.argmax(-1) == b.argmax(-1)).double().mean().item(),
        )

    print(
        json.dumps(dict(name=name, n=len(imgs), pte_vs_ref=met(o, r), pte_vs_fp32=met(o, fl), ref_vs_fp32=met(r, fl))),
        flush=True,
    )
