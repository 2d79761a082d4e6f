"""Batched candidates: one InstructPix2Pix call that makes four images against four calls that make one each.

Run alone as `python -m benchmarks.candidates TINY_MODELS_DIR`; it prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from PIL import Image

CANDIDATES = 4
SIZE = 256
STEPS = 2
REPEATS = 2


def measure(ip2p_dir: Path, *, candidates: int = CANDIDATES, size: int = SIZE, steps: int = STEPS,
            repeats: int = REPEATS) -> dict:
    """Time `candidates` images made in one batched call and in as many single calls, alternating, in this process."""
    import torch

    from tools.instruct_pix2pix import edit_image

    image = Image.open(Path(__file__).resolve().parent.parent / "agent" / "data" / "cat.png").convert("RGB")
    image = image.resize((size, size))
    from tools.instruct_pix2pix import resolve_device_and_dtype

    device, _ = resolve_device_and_dtype()
    settings = {"model": str(ip2p_dir), "steps": steps, "max_side": size, "device": device}
    # The first call loads the pipeline and warms its kernels; it is not timed.
    edit_image(image, "add a party hat", **settings)

    batched, sequential = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        edit_image(image, "add a party hat", seed=0, num_images=candidates, **settings)
        batched.append(time.perf_counter() - started)

        started = time.perf_counter()
        for index in range(candidates):
            edit_image(image, "add a party hat", seed=index, num_images=1, **settings)
        sequential.append(time.perf_counter() - started)

    batched_s, sequential_s = statistics.median(batched), statistics.median(sequential)
    return {
        "candidates": candidates,
        "size": f"{size}x{size}",
        "steps": steps,
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "cuda": device.startswith("cuda"),
        "batched_s": batched_s,
        "sequential_s": sequential_s,
        "ratio": batched_s / sequential_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("tiny_models", type=Path, help="folder with ip2p/ from tests.tiny_models")
    args = parser.parse_args()
    print(json.dumps(measure(args.tiny_models / "ip2p")))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
