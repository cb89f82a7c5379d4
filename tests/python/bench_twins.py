"""Timing server for `zoo bench`: runs the Python twins (zoo_twins.py) of the benchmarked models on Debian's
python3-torch, the same LibTorch build as zoo, so that C++ and Python are timed in one invocation, interleaved.

    /usr/bin/python3 tests/python/bench_twins.py        (started by `zoo bench`; speaks JSON lines)

Requests on stdin, one JSON object per line; one JSON reply per line on stdout:
  {"op": "load", "id": ID, "dir": DIR}   DIR holds case.json, weights.pt (zoo's TorchScript weights, loaded by name)
                                         and batch.pt (the C++ batch: input, target, latency_input)
  {"op": "time", "id": ID, "what": "train" | "infer" | "latency", "threads": T, "min_steps": S, "min_time": SEC}
                                         -> {"seconds": per-step mean, "steps": n}; the same rule as the C++ side:
                                         one untimed step, then at least S steps and at least SEC seconds
  {"op": "info"}                         -> {"torch": version, "allocator": "glibc malloc" | "jemalloc" | ...}
  {"op": "quit"}
Errors reply {"error": "..."} and the server keeps going.

A training step is what zoo's trainer does: zero_grad, the task's loss (plus a layer's load-balancing loss),
loss.item(), backward, Adam step. Inference is the model's forward in eval mode under no_grad; latency is the same
at batch size 1. case.json's "precision" "bf16-mixed" runs the loss and the forward under
torch.autocast("cpu", dtype=torch.bfloat16), as zoo's --precision bf16-mixed does.
"""
import ctypes
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zoo_training  # noqa: E402
import zoo_twins  # noqa: E402


def autocast_group_norm_in_float32():
    """LibTorch 1.13's CPU autocast has no rule for group_norm, whose kernel refuses a bfloat16 input with float32
    parameters; zoo registers PyTorch's rule for such operations (ops/autocast.cpp), and so does its twin here."""
    if int(torch.__version__.split(".")[0]) >= 2:
        return None
    library = torch.library.Library("aten", "IMPL")

    def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, cudnn_enabled=True):
        with torch.autocast("cpu", enabled=False):
            widen = lambda t: None if t is None else t.float()  # noqa: E731
            return torch.group_norm(input.float(), num_groups, widen(weight), widen(bias), eps, cudnn_enabled)

    library.impl("group_norm", group_norm, "AutocastCPU")
    return library  # kept alive: the registration lasts as long as the Library object


def openblas_single_threaded():
    """zoo runs OpenBLAS single-threaded under LibTorch's own threads (training/trainer.cpp apply_threads); do the
    same here so both sides run the same kernels."""
    try:
        for line in open("/proc/self/maps"):
            path = line.split()[-1]
            if "openblas" in os.path.basename(path) and path.startswith("/"):
                ctypes.CDLL(path).openblas_set_num_threads(1)
                return
    except (OSError, AttributeError):
        pass


def task_loss(case, twin, batch):
    """The trainer's loss (zoo_training.task_loss) plus the layers' auxiliary losses; for the layers outside the
    registry ("kernel"), the mean square of the (first) output."""
    if case["task"] == "kernel":
        loss = run_kernel(case, twin, batch["input"]).pow(2).mean()
    else:
        loss, _ = zoo_training.task_loss(case["task"], twin, batch, case["options"], case.get("task_options"))
    aux = zoo_training.auxiliary_loss(twin) if twin is not None else None
    return loss + aux if aux is not None else loss


def run_kernel(case, twin, x):
    name = case["model"]
    if name == "sinkhorn":
        return zoo_twins.sinkhorn_knopp(x, case["options"]["iterations"])
    if name == "gated-lstm-cell-explicit":  # x: [T, N, input]; unrolled over T steps from zero state
        h = c = x.new_zeros(x.shape[1], twin.weight_hh.shape[1])
        for t in range(x.shape[0]):
            h, c = twin(x[t], h, c)
        return h
    if name == "attention":
        return twin(x, x, x)[0]
    if name == "ode-solver":  # the field ignores t
        return zoo_twins.odeint(lambda t, y: twin(y), x, 0.0, 1.0, "rk4", case["options"]["steps"], 0, 0, 0)
    return twin(x)


class Case:
    def __init__(self, directory):
        self.spec = json.load(open(os.path.join(directory, "case.json")))
        name, options = self.spec["model"], self.spec["options"]
        if name == "sinkhorn":
            self.twin = None
        elif name == "ode-solver":  # zoo::models::MLPField: torchdiffeq's ODEFunc (net = Linear, Tanh, Linear)
            self.twin = zoo_twins.ODEFunc(options["dim"], options["hidden"])
        else:
            self.twin = zoo_twins.build(name, options)
        raw = torch.load(os.path.join(directory, "batch.pt"))
        self.batch = {k: v for k, v in raw.items()}
        if self.twin is not None:
            zoo_twins.load_weights(self.twin, os.path.join(directory, "weights.pt"))
            self.optimizer = torch.optim.Adam(self.twin.parameters(), lr=self.spec.get("lr", 1e-3))
        else:
            self.batch["input"].requires_grad_(True)
            self.optimizer = None

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.spec.get("precision", "32") == "bf16-mixed")

    def train_step(self):
        if self.twin is not None:
            self.twin.train()
            self.optimizer.zero_grad()
        with self.autocast():
            loss = task_loss(self.spec, self.twin, self.batch)
        loss.item()
        loss.backward()
        if self.optimizer is not None:
            self.optimizer.step()

    def infer(self, key):
        if self.twin is not None:
            self.twin.eval()
        with torch.no_grad(), self.autocast():
            x = self.batch[key]
            if self.spec["task"] == "kernel":
                run_kernel(self.spec, self.twin, x)
            else:
                self.twin(x)


def allocator():
    """The allocator behind malloc: one preloaded into the process (LD_PRELOAD, inherited from zoo), or glibc's."""
    try:
        for line in open("/proc/self/maps"):
            name = os.path.basename(line.split()[-1])
            for known in ("jemalloc", "tcmalloc", "mimalloc"):
                if known in name:
                    return known
    except OSError:
        pass
    return "glibc malloc"


def measure(step, min_steps, min_time):
    step()  # untimed: first-call allocations
    start, steps = time.perf_counter(), 0
    while steps < min_steps or time.perf_counter() - start < min_time:
        step()
        steps += 1
    return (time.perf_counter() - start) / steps, steps


def main():
    openblas_single_threaded()
    group_norm_rule = autocast_group_norm_in_float32()  # noqa: F841
    cases = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            op = request["op"]
            if op == "quit":
                break
            if op == "info":
                reply = {"torch": torch.__version__, "allocator": allocator()}
            elif op == "load":
                cases[request["id"]] = Case(request["dir"])
                reply = {"ok": True}
            elif op == "time":
                case = cases[request["id"]]
                torch.set_num_threads(int(request["threads"]))
                torch.manual_seed(0)
                what = request["what"]
                step = case.train_step if what == "train" else (
                    lambda: case.infer("input" if what == "infer" else "latency_input"))
                seconds, steps = measure(step, int(request["min_steps"]), float(request["min_time"]))
                reply = {"seconds": seconds, "steps": steps}
            else:
                reply = {"error": "unknown op '%s'" % op}
        except Exception as e:  # reported to zoo, which names the case
            message = str(e).strip().splitlines()
            reply = {"error": "%s: %s" % (type(e).__name__, message[-1] if message else "")}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
