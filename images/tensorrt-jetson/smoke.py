"""Smoke test of images/tensorrt-jetson, run INSIDE it on the Jetson (docker run --runtime nvidia).

Imports NVIDIA's TensorRT bindings, makes a builder (which needs the GPU) and prints one JSON line:
TensorRT version, GPU name, DLA cores, and the L4T release when on a Jetson. Exit 0: usable.
"""

import json
import os
import sys


def main() -> int:
    import numpy as np
    import tensorrt as trt

    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    info = {"smoke": "tensorrt-jetson", "ok": True,
            "python": sys.version.split()[0], "tensorrt": trt.__version__, "numpy": np.__version__,
            "dla_cores": int(getattr(builder, "num_DLA_cores", 0))}
    if os.path.isfile("/etc/nv_tegra_release"):
        with open("/etc/nv_tegra_release") as f:
            info["nv_tegra_release"] = f.readline().strip()
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
