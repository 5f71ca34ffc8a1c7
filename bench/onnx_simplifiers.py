"""onnxsim vs onnxslim on diverse PyTorch exports: which keeps more models working?

Exports 8 small models defined here (torch.onnx.export, dynamo=False, opset 17 — what
converters/source_torch does), simplifies each with both tools in a separate process (a native
crash or hang is a result, not the end of the benchmark) and records: success, node counts,
seconds, and parity of the simplified model in onnxruntime against PyTorch (min cosine over
4 random inputs, batch-2 too for the dynamic-batch model).

Run in the torch environment (images/torch: torch, onnx, onnxruntime, onnxsim, onnxslim):

    python bench/onnx_simplifiers.py [--out bench/results/onnx_simplifiers]
"""

from __future__ import annotations

ENV = 'torch'  # the converter environment this study runs in (bench/_common.py, invoke bench)

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
from _common import flat_helpers  # noqa: E402

sys.path.insert(0, flat_helpers())  # the converter helpers, flat (as a job holds them)
import ekit  # noqa: E402
import ekit_onnx  # noqa: E402

TOOLS = ("onnxsim", "onnxslim")


def models():
    import torch
    from torch import nn
    import torch.nn.functional as F
    from zoo.mobilenet_v2 import mobilenet_v2

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.down = None if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = F.relu(self.b1(self.c1(x)))
            y = self.b2(self.c2(y))
            return F.relu(y + (x if self.down is None else self.down(x)))

    class ResNetish(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 32, 7, 2, 3, bias=False), nn.BatchNorm2d(32),
                                      nn.ReLU(), nn.MaxPool2d(3, 2, 1))
            self.layers = nn.Sequential(Basic(32, 32, 1), Basic(32, 64, 2), Basic(64, 128, 2),
                                        Basic(128, 256, 2))
            self.fc = nn.Linear(256, 100)

        def forward(self, x):
            x = self.layers(self.stem(x))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    class Block(nn.Module):
        def __init__(self, d, heads):
            super().__init__()
            self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

        def forward(self, x):
            h = self.n1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            return x + self.mlp(self.n2(x))

    class ViTTiny(nn.Module):
        def __init__(self, d=192, depth=4, heads=3, patch=16, img=224, classes=1000):
            super().__init__()
            self.patch = nn.Conv2d(3, d, patch, patch)
            self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
            self.pos = nn.Parameter(torch.randn(1, (img // patch) ** 2 + 1, d) * 0.02)
            self.blocks = nn.Sequential(*[Block(d, heads) for _ in range(depth)])
            self.norm = nn.LayerNorm(d)
            self.head = nn.Linear(d, classes)

        def forward(self, x):
            x = self.patch(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
            x = self.norm(self.blocks(x))
            return self.head(x[:, 0])

    def cbr(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU())

    class UNetish(nn.Module):
        def __init__(self):
            super().__init__()
            self.e1, self.e2, self.e3 = cbr(3, 16), cbr(16, 32), cbr(32, 64)
            self.d2, self.d1 = cbr(64 + 32, 32), cbr(32 + 16, 16)
            self.out = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            a = self.e1(x)
            b = self.e2(F.max_pool2d(a, 2))
            c = self.e3(F.max_pool2d(b, 2))
            u = F.interpolate(c, scale_factor=2.0, mode="bilinear", align_corners=False)
            d = self.d2(torch.cat([u, b], 1))
            u = F.interpolate(d, scale_factor=2.0, mode="nearest")
            return self.out(self.d1(torch.cat([u, a], 1)))

    class CRNN(nn.Module):
        def __init__(self, rnn="gru"):
            super().__init__()
            self.cnn = nn.Sequential(cbr(3, 32), nn.MaxPool2d(2), cbr(32, 64), nn.MaxPool2d(2),
                                     cbr(64, 64), nn.MaxPool2d((8, 1)))
            cls = nn.GRU if rnn == "gru" else nn.LSTM
            self.rnn = cls(64, 64, num_layers=2, batch_first=True, bidirectional=rnn == "lstm")
            self.fc = nn.Linear(64 * (2 if rnn == "lstm" else 1), 37)

        def forward(self, x):
            f = self.cnn(x).squeeze(2).transpose(1, 2)  # [N, W/4, 64]
            y, _ = self.rnn(f)
            return self.fc(y)

    class SE(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.fc1, self.fc2 = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

        def forward(self, x):
            s = F.adaptive_avg_pool2d(x, 1)
            return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))

    class DWSE(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            mid = cin * 4
            self.body = nn.Sequential(
                nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.Hardswish(),
                nn.Conv2d(mid, mid, 5, stride, 2, groups=mid, bias=False), nn.BatchNorm2d(mid),
                nn.Hardswish(), SE(mid), nn.Conv2d(mid, cout, 1, bias=False),
                nn.BatchNorm2d(cout))
            self.res = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.res else self.body(x)

    class MobileNetV3ish(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                                      nn.Hardswish())
            self.blocks = nn.Sequential(DWSE(16, 24, 2), DWSE(24, 24, 1), DWSE(24, 40, 2),
                                        DWSE(40, 40, 1), DWSE(40, 80, 2))
            self.head = nn.Sequential(nn.Linear(80, 256), nn.Hardswish(), nn.Dropout(0.2),
                                      nn.Linear(256, 1000))

        def forward(self, x):
            x = self.blocks(self.stem(x))
            return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    torch.manual_seed(0)
    mnv2 = mobilenet_v2()
    w = os.environ.get("MNV2_WEIGHTS")
    if w:
        mnv2.load_state_dict(torch.load(w, weights_only=True))

    def bn_stats(m):  # non-trivial running stats so BN folding is really exercised
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
        return m

    return [
        ("mobilenet_v2", mnv2, (1, 3, 224, 224), False),
        ("resnet_ish", bn_stats(ResNetish()), (1, 3, 224, 224), False),
        ("resnet_ish_dynbatch", bn_stats(ResNetish()), (1, 3, 224, 224), True),
        ("vit_tiny", ViTTiny(), (1, 3, 224, 224), False),
        ("unet_ish", bn_stats(UNetish()), (1, 3, 128, 128), False),
        ("crnn_gru", bn_stats(CRNN("gru")), (1, 3, 32, 128), False),
        ("crnn_bilstm", bn_stats(CRNN("lstm")), (1, 3, 32, 128), False),
        ("mbv3_se_dw", bn_stats(MobileNetV3ish()), (1, 3, 224, 224), False),
    ]


def simplify_worker(tool: str, src: str, dst: str) -> None:
    """Child process: simplify src -> dst, print a JSON line."""
    import onnx

    m = onnx.load(src)
    t = time.perf_counter()
    out, info = ekit_onnx.simplify_onnx(m, tool)
    info["seconds"] = round(time.perf_counter() - t, 2)
    if info["applied"]:
        onnx.save(out, dst)
    print("RESULT " + json.dumps(info), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(HERE / "results" / "onnx_simplifiers"))
    ap.add_argument("--timeout", type=int, default=300)
    a = ap.parse_args()
    import torch
    import onnx
    import onnxruntime
    from importlib import metadata

    torch.set_grad_enabled(False)
    tmp = Path(tempfile.mkdtemp(prefix="simp-bench-"))
    rng = np.random.default_rng(0)
    rows = []
    for name, model, shape, dyn in models():
        model.eval()
        xs = rng.normal(size=(4, *shape[1:])).astype(np.float32)
        ref = np.concatenate([model(torch.from_numpy(xs[i:i + 1])).numpy() for i in range(4)])
        ref2 = model(torch.from_numpy(xs[:2])).numpy()
        raw = tmp / f"{name}.onnx"
        row = {"model": name, "input": list(shape), "dynamic_batch": dyn}
        try:
            torch.onnx.export(model, (torch.from_numpy(xs[:1]),), os.fspath(raw), dynamo=False,
                              opset_version=17, input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "b"}, "output": {0: "b"}} if dyn
                              else None)
            row["nodes_raw"] = len(onnx.load(os.fspath(raw)).graph.node)
        except Exception as e:
            row["export_error"] = f"{type(e).__name__}: {e}"[:200]
            rows.append(row)
            continue

        def parity(path):
            sess = ekit_onnx.ort_session(path)
            y = ekit_onnx.ort_run(sess, xs)[0]
            res = {"cosine": ekit.compare([ref], [y])["cosine"],
                   "max_abs": float(np.abs(ref - y).max())}
            if dyn:
                y2 = sess.run(None, {"input": xs[:2]})[0]
                res["batch2_cosine"] = ekit.compare([ref2], [y2])["cosine"]
            return res

        row["raw"] = parity(raw)
        for tool in TOOLS:
            dst = tmp / f"{name}.{tool}.onnx"
            r = {"ok": False}
            try:
                p = subprocess.run([sys.executable, __file__, "--worker", tool, os.fspath(raw),
                                    os.fspath(dst)], capture_output=True, text=True,
                                   timeout=a.timeout)
                line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
                if line is None:
                    r["error"] = f"exit {p.returncode}: " + (p.stderr.strip().splitlines() or
                                                             [""])[-1][:200]
                else:
                    info = json.loads(line[7:])
                    r.update(nodes=info["nodes_after"], seconds=info["seconds"],
                             error=info["error"])
                    if info["applied"]:
                        par = parity(dst)
                        r.update(par)
                        r["ok"] = (par["cosine"] >= 0.99999 and
                                   par.get("batch2_cosine", 1.0) >= 0.99999)
            except subprocess.TimeoutExpired:
                r["error"] = f"timeout after {a.timeout} s"
            except Exception as e:  # ORT cannot load the simplified model, ...
                r["error"] = f"{type(e).__name__}: {str(e)[:200]}"
            row[tool] = r
            print(name, tool, r, flush=True)
        rows.append(row)

    versions = {d: metadata.version(d) for d in ("torch", "onnx", "onnxruntime", *TOOLS)}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ekit.write_json(out.with_suffix(".json"), {"versions": versions, "rows": rows})
    lines = ["# onnxsim vs onnxslim", "",
             ", ".join(f"{k} {v}" for k, v in versions.items())
             + "; export: torch.onnx.export(dynamo=False, opset 17); ok = simplified and ORT "
               "output cosine >= 0.99999 vs PyTorch (batch 1 and, dynamic model, batch 2)", "",
             "| model | raw nodes | onnxsim nodes | onnxsim s | onnxsim ok | onnxslim nodes | "
             "onnxslim s | onnxslim ok |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "export_error" in r:
            lines.append(f"| {r['model']} | export failed: {r['export_error'][:60]} |")
            continue
        cells = [r["model"], str(r["nodes_raw"])]
        for tool in TOOLS:
            t = r[tool]
            cells += [str(t.get("nodes", "-")), str(t.get("seconds", "-")),
                      "yes" if t["ok"] else f"NO ({(t.get('error') or 'cos %.6f' % t.get('cosine', 0))[:70]})"]
        lines.append("| " + " | ".join(cells) + " |")
    ok = {t: sum(1 for r in rows if r.get(t, {}).get("ok")) for t in TOOLS}
    lines += ["", "models kept working: " + ", ".join(f"{t} {n}/{len(rows)}" for t, n in ok.items())]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        simplify_worker(*sys.argv[2:])
    else:
        main()
