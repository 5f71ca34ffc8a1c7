"""PyTorch model loading shared by the steps that need the user's own module (the torch source
step, the ExecuTorch convert step): TorchScript, torch.export (.pt2), a state dict with its
architecture (--arch), or a trusted pickle. User errors end in ``ekit.fail`` with one line."""

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import ekit


def short(e: BaseException) -> str:
    """One informative line: TorchScript puts the real error on its LAST line."""
    lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
    if not lines:
        return type(e).__name__
    line = lines[-1] if len(lines) > 1 and "TorchScript interpreter" in lines[0] else lines[0]
    if line.startswith(type(e).__name__ + ": "):
        line = line[len(type(e).__name__) + 2:]
    return f"{type(e).__name__}: {line[:300]}"


def load_model(fmt: str, model_path: Path, opts: dict, notes: list):
    """The eval-mode float module of a PyTorch source file (``fmt``: a source format of
    targets/_sources.toml); notes about what was done go to ``notes``."""
    import torch

    def load_arch():
        ref = opts.get("arch")
        if not ref:
            ekit.fail("usage", f"{model_path.name} holds only weights (a state dict): edgekiln needs "
                               "the architecture too",
                      "pass --arch FILE.py:FUNCTION (or zoo/mobilenet_v2.py:mobilenet_v2)")
        where, _, fn = str(ref).rpartition(":")
        if not where or not fn:
            ekit.fail("usage", f"--arch {ref!r}: expected FILE.py:FUNCTION or package.module:FUNCTION")
        try:
            if where.endswith(".py"):
                file = (Path.cwd() / where).resolve()
                if not file.is_file():
                    ekit.fail("usage", f"--arch file {where} not found in the job")
                sys.path.insert(0, str(file.parent))
                spec_ = importlib.util.spec_from_file_location(f"edgekiln_arch_{file.stem}", file)
                mod = importlib.util.module_from_spec(spec_)
                spec_.loader.exec_module(mod)
            else:
                mod = importlib.import_module(where)
        except SystemExit:
            raise
        except Exception as e:
            ekit.fail("usage", f"--arch {ref}: cannot import {where} ({short(e)})")
        factory = getattr(mod, fn, None)
        if factory is None:
            ekit.fail("usage", f"--arch {ref}: {where} has no {fn!r}")
        try:
            return factory(**(opts.get("arch_kwargs") or {}))
        except Exception as e:
            ekit.fail("usage", f"--arch {ref}: calling {fn}(**{opts.get('arch_kwargs') or {}}) "
                               f"failed ({short(e)})")


    def unwrap_state_dict(obj):
        """Accept {name: tensor}, or a checkpoint {"state_dict"|"model"|...: {name: tensor}}."""
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            sd = obj
        else:
            sd = None
            if isinstance(obj, dict):
                for key in ("state_dict", "model_state_dict", "model", "net", "weights", "ema"):
                    v = obj.get(key)
                    if isinstance(v, dict) and v and all(isinstance(t, torch.Tensor)
                                                         for t in v.values()):
                        sd = v
                        notes.append(f"weights taken from checkpoint key {key!r}")
                        break
            if sd is None:
                return None
        if all(k.startswith("module.") for k in sd):
            sd = {k[len("module."):]: v for k, v in sd.items()}
            notes.append("'module.' prefix (DataParallel) removed from the weight names")
        return sd


    def from_state_dict(sd):
        model = load_arch()
        own = model.state_dict()
        missing = [k for k in own if k not in sd]
        unexpected = [k for k in sd if k not in own]
        wrong = [f"{k} {list(sd[k].shape)} vs {list(own[k].shape)}" for k in own
                 if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or wrong:
            def few(xs):
                return ", ".join(xs[:6]) + (f", ... ({len(xs)} in all)" if len(xs) > 6 else "")
            parts = []
            if missing:
                parts.append(f"missing keys: {few(missing)}")
            if unexpected:
                parts.append(f"unexpected keys: {few(unexpected)}")
            if wrong:
                parts.append(f"shape mismatches (file vs arch): {few(wrong)}")
            ekit.fail("invalid_model", f"the weights in {model_path.name} do not fit --arch "
                                       f"{opts.get('arch')}: " + "; ".join(parts),
                      "check the architecture and its arguments (--arch-kwargs, e.g. num_classes)")
        model.load_state_dict(sd, strict=True)
        return model


    # load
    if fmt == "torchscript":
        try:
            model = torch.jit.load(os.fspath(model_path), map_location="cpu")
        except Exception as e:
            ekit.fail("invalid_model", f"{model_path.name} is not a TorchScript archive ({short(e)})",
                      "a state dict needs --arch; a torch.export file ends in .pt2")
    elif fmt == "torch_export":
        try:
            program_module = torch.export.load(os.fspath(model_path)).module()
        except Exception as e:
            ekit.fail("invalid_model", f"{model_path.name} is not a torch.export program "
                                       f"({short(e)})")

        class ExportedModule(torch.nn.Module):
            """The unlifted torch.export module refuses train()/eval(), which the TorchScript
            exporter calls; it is already in the mode it was exported in."""

            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, x):
                return self.m(x)

            def train(self, mode=True):
                return self

        model = ExportedModule(program_module)
    elif fmt in ("state_dict", "pickle"):
        trusted = fmt == "pickle" and bool(opts.get("trust_pickle"))
        if trusted and (Path.cwd() / "arch").is_dir():
            # a pickled module needs its class importable: the --arch file's folder is on the path
            sys.path.insert(0, os.fspath(Path.cwd() / "arch"))
        try:
            obj = torch.load(os.fspath(model_path), map_location="cpu", weights_only=not trusted)
        except Exception as e:
            msg = str(e)
            if "weights_only" in msg or "Unsupported global" in msg or "WeightsUnpickler" in msg:
                if opts.get("arch") is None:
                    ekit.fail("usage", f"{model_path.name} is a pickled Python object (a whole model), "
                                       "not plain weights: loading it would run code from the file",
                              "if you trust the file pass --trust-model (it runs code from the file); better: save "
                              "model.state_dict() and pass --arch FILE.py:FUNCTION")
                ekit.fail("usage", f"{model_path.name} contains pickled Python objects besides "
                                   f"tensors ({short(e)})",
                          "save model.state_dict() with torch.save, or pass --trust-model if you trust the file")
            if isinstance(e, (ModuleNotFoundError, AttributeError)) and trusted:
                ekit.fail("usage", f"{model_path.name} is a pickled module whose class cannot be "
                                   f"imported ({short(e)})",
                          "pass --arch FILE.py:FUNCTION naming the file that defines the class")
            ekit.fail("invalid_model", f"{model_path.name} cannot be read by torch.load ({short(e)})",
                      "is the file complete?")
        if isinstance(obj, torch.nn.Module):
            model = obj
        else:
            sd = unwrap_state_dict(obj)
            if sd is None:
                ekit.fail("invalid_model", f"{model_path.name} holds a {type(obj).__name__}, neither "
                                           "an nn.Module nor a state dict of tensors")
            model = from_state_dict(sd)
    else:
        ekit.fail("usage", f"source format {fmt!r} is not a PyTorch format")

    if not isinstance(model, torch.nn.Module) and not callable(model):
        ekit.fail("invalid_model", f"{model_path.name} did not give a callable model")
    try:
        model = model.eval()
    except Exception:  # an exported GraphModule may not support eval() mode switches
        pass
    try:
        model = model.float()
    except Exception:
        pass
    return model
