"""A GSL checkpoint scored one image per call with its scale pool's padding mask on and off.

Run: .venv/bin/python -m studies.gsl_padding_check runs/study/c4_gsl/seed0/last.pt

An exported GSL detector pools its scales over the whole input (the graph is not told
where the image ends inside the 32-px-rounded canvas); `podkit eval` masks the padding out.
Scoring the checkpoint at batch 1 both ways (the mask off = `image_extent` a no-op) tells
how much of an artefact's AP difference that mask explains (docs/benchmarks.md).
"""

import contextlib
import json
import sys

import podkit.models.output as output
from podkit.evaluation.artefacts import evaluate_path

if __name__ == "__main__":
    checkpoint = sys.argv[1]
    masked = evaluate_path(checkpoint, ["eval.batch_size=1"])
    output.image_extent = lambda *args, **kwargs: contextlib.nullcontext()
    unmasked = evaluate_path(checkpoint, ["eval.batch_size=1"])
    print(json.dumps({"masked": masked, "unmasked": unmasked}, indent=2))
