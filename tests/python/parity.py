"""Parity of zoo's C++ models with their Python twins (tests/python/zoo_twins.py).

    /usr/bin/python3 tests/python/parity.py ROOT

ROOT holds one directory per case, written by tests/python/parity.cpp: weights.pt (zoo's TorchScript weights),
options.json ({"model": NAME, "options": {...}}) and case.pt (torch::pickle_save of the inputs, the seed drawn
before the forward, the C++ outputs, the weights of the scalar loss sum_k (out_k * r_k).sum() and the C++
gradients of every parameter). For each case the twin loads the weights by name (strict), runs the same input
in eval mode (and saves its state_dict as state_dict.pth with torch.save, for zoo to read back), and its
outputs and gradients are compared: the largest absolute difference, divided by
max(1, largest absolute C++ value) of that tensor, must be at most 1e-5 (or the case's own "tolerance" in
options.json, given where float32 rounding accumulates further, as in dopri5; options.json's "twin" holds settings of
the twin alone, merged into the options, and "gradient_tolerance" where the gradients may differ more). Prints one line per case; exits 1 if
any case fails.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zoo_twins  # noqa: E402

TOLERANCE = 1e-5


def scaled_diff(ours, theirs):
    if ours.shape != theirs.shape:
        return float("inf")
    scale = max(1.0, theirs.abs().max().item()) if theirs.numel() else 1.0
    return (ours.double() - theirs.double()).abs().max().item() / scale if theirs.numel() else 0.0


def merged(options, changes):
    """options with the twin's own settings (options.json's "twin", e.g. the dopri5 twin's last step) merged in."""
    out = dict(options)
    for key, value in changes.items():
        out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def run_case(path):
    spec = json.load(open(os.path.join(path, "options.json")))
    twin_options = {k: v for k, v in spec.get("twin", {}).items() if k != "gradient_tolerance"}
    twin = zoo_twins.load_weights(zoo_twins.build(spec["model"], merged(spec["options"], twin_options)),
                                  os.path.join(path, "weights.pt"))
    twin.eval()
    # The file every PyTorch user has: zoo reads it back and compares it with weights.pt (tests/python/parity.cpp).
    torch.save(twin.state_dict(), os.path.join(path, "state_dict.pth"))
    case = torch.load(os.path.join(path, "case.pt"))
    torch.manual_seed(case["seed"])
    out = twin(*case["inputs"])
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    out_diff = max(scaled_diff(o.detach(), r) for o, r in zip(outs, case["outputs"]))
    if len(outs) != len(case["outputs"]):
        out_diff = float("inf")
    loss = sum((o * w).sum() for o, w in zip(outs, case["loss_weights"]))
    loss.backward()
    grad_diff, worst = 0.0, ""
    for name, p in twin.named_parameters():
        ours = p.grad if p.grad is not None else torch.zeros_like(p)
        theirs = case["grads"].get(name)
        d = scaled_diff(ours, theirs) if theirs is not None else float("inf")
        if d > grad_diff:
            grad_diff, worst = d, name
    return out_diff, grad_diff, worst


def run_cases(root, check):
    """check(path) -> (ok, detail) for every case directory of root, one line each ("case NAME ok DETAIL"); exits 1
    if any failed. A case that cannot run at all is a failure with its reason."""
    failed = 0
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if not os.path.isdir(path):
            continue
        try:
            ok, detail = check(path)
            print("case %s %s %s" % (name, "ok" if ok else "FAILED", detail))
        except Exception as e:
            ok = False
            print("case %s FAILED %s: %s" % (name, type(e).__name__, str(e).splitlines()[0] if str(e) else ""))
        failed += not ok
    sys.exit(1 if failed else 0)


def check_case(path):
    out_diff, grad_diff, worst = run_case(path)
    spec = json.load(open(os.path.join(path, "options.json")))
    tolerance = spec.get("tolerance", TOLERANCE)
    ok = out_diff <= tolerance and grad_diff <= spec.get("twin", {}).get("gradient_tolerance", tolerance)
    return ok, "output %.3g gradient %.3g%s" % (out_diff, grad_diff, " (worst %s)" % worst if worst else "")


if __name__ == "__main__":
    run_cases(sys.argv[1], check_case)
