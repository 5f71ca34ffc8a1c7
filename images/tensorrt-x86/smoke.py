"""Smoke test of images/tensorrt-x86, run INSIDE it on the GPU host (docker run --runtime nvidia).

Imports the NGC image's TensorRT, makes a builder (which needs the GPU) and prints one JSON line
with the TensorRT version and the GPU's compute capability. Exit 0: usable.
"""

import json
import sys


def main() -> int:
    import tensorrt as trt
    from cuda import cudart

    trt.Builder(trt.Logger(trt.Logger.WARNING))
    err, props = cudart.cudaGetDeviceProperties(0)
    print(json.dumps({"smoke": "tensorrt-x86", "ok": int(err) == 0, "python": sys.version.split()[0],
                      "tensorrt": trt.__version__, "sm": f"{props.major}.{props.minor}"}))
    return 0 if int(err) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
