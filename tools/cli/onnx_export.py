"""zoo export --format onnx, the Python half (compiled into zoo, run as /usr/bin/python3 -c SCRIPT ARGS).

    python3 -c SCRIPT TRACED IO OUT OPSET DYNAMIC

LibTorch's C++ API cannot write ONNX, so zoo traces its model to TorchScript (TRACED) and hands it to Debian's
python3-torch: torch.onnx.export writes OUT, python3-onnx's checker checks it, and OpenCV's DNN module
(python3-opencv) runs it on the inputs of IO (torch::pickle_save of {"inputs": [x, ...], "outputs": [[y, ...],
...]}: the C++ forward's outputs for each input). DYNAMIC (0/1) makes the batch axis free. Prints "stage: ..." lines, then one JSON line:
{"max_abs_diff": largest |OpenCV - C++| over every output of every input, "outputs": count, "opset": N}. A problem
is one line on stderr and exit 3 (a missing package: exit 4).
"""
import json
import re
import sys
import warnings

warnings.filterwarnings("ignore")  # torch.onnx's advice on stderr would hide the one line that says what failed


def stage(what):
    """Where the export is, for zoo's message when a library kills the process (OpenCV has died of SIGFPE)."""
    print("stage: " + what, flush=True)


def fail(message, code=3):
    print(message, file=sys.stderr)
    sys.exit(code)


missing = []
for module, package in (("torch", "python3-torch"), ("onnx", "python3-onnx"), ("cv2", "python3-opencv")):
    try:
        __import__(module)
    except ImportError:
        missing.append(package)
if missing:
    fail("zoo export --format onnx needs %s (only for this command): apt-get install %s"
         % (", ".join(missing), " ".join(missing)), 4)

import cv2  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

traced_path, io_path, out_path, opset, dynamic = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
module = torch.jit.load(traced_path)
io = torch.load(io_path)
inputs, expected = io["inputs"], io["outputs"]
count = len(expected[0])
output_names = ["output%d" % k if count > 1 else "output" for k in range(count)]
axes = {name: {0: "batch"} for name in ["input"] + output_names} if dynamic == "1" else None
stage("torch.onnx.export")
try:
    # Traced again here: a module loaded from a file has no dtypes or ranks on its values, which torch.onnx's
    # symbolics need ("Scalar type name cannot be None", "unknown input rank"); running it records them.
    module = torch.jit.trace(module, (inputs[0],), check_trace=False)
    torch.onnx.export(module, (inputs[0],), out_path, opset_version=opset, input_names=["input"],
                      output_names=output_names, dynamic_axes=axes)
except Exception as e:  # torch.onnx.errors.* name the operator; older messages say "operator 'aten::x'"
    text = str(e)
    op = re.search(r"aten::\w+|prim::\w+", text)
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    fail("torch.onnx.export (opset %d) cannot export %s: %s"
         % (opset, "the operator " + op.group(0) if op else "this model", first))
stage("onnx.checker")
# A weight used twice (an ODE step's field, a shared block) is one initializer read through Identity nodes, which
# OpenCV 4.6 cannot load: each such Identity becomes a copy of the initializer under its output's name.
graph_model = onnx.load(out_path)
initializers = {t.name: t for t in graph_model.graph.initializer}
kept = []
for node in graph_model.graph.node:
    if node.op_type == "Identity" and node.input[0] in initializers:
        copy = onnx.TensorProto()
        copy.CopyFrom(initializers[node.input[0]])
        copy.name = node.output[0]
        graph_model.graph.initializer.append(copy)
    else:
        kept.append(node)
if len(kept) != len(graph_model.graph.node):
    del graph_model.graph.node[:]
    graph_model.graph.node.extend(kept)
    onnx.save(graph_model, out_path)
try:
    onnx.checker.check_model(onnx.load(out_path))
except Exception as e:
    fail("onnx.checker refuses the exported model: %s" % str(e).strip().splitlines()[0])


def opencv_reason(e):
    """The operator (or OpenCV layer) an OpenCV error names, and OpenCV's innermost message."""
    text = " ".join(str(e).split())
    op = (re.search(r'of type "?(\w+)"?', text) or re.search(r"Node \[(\w+)@", text)
          or re.search(r"layers/(\w+?)_layer\.cpp", text))
    inner = text.split("error: (")[-1]
    inner = inner[inner.find(") ") + 2:] if ") " in inner else inner
    return ("operator %s: " % op.group(1) if op else "") + inner.split(" in function")[0]


stage("loading it in OpenCV's DNN module")
try:
    net = cv2.dnn.readNetFromONNX(out_path)
except cv2.error as e:
    fail("OpenCV's DNN module cannot load the exported model (%s)" % opencv_reason(e))
worst = 0.0
for x, ys in zip(inputs, expected):
    stage("running it in OpenCV's DNN module on input %s" % list(x.shape))
    try:
        net.setInput(x.numpy(), "input")
        got = net.forward(output_names)
    except cv2.error as e:
        fail("OpenCV's DNN module cannot run the exported model on input %s (%s)" % (list(x.shape), opencv_reason(e)))
    for g, y in zip(got, ys):
        g = torch.from_numpy(g)
        if list(g.shape) != list(y.shape):
            if g.numel() != y.numel():
                fail("OpenCV's output for input %s has shape %s, the C++ forward's %s"
                     % (list(x.shape), list(g.shape), list(y.shape)))
            g = g.reshape(y.shape)
        worst = max(worst, (g.double() - y.double()).abs().max().item() if y.numel() else 0.0)
print(json.dumps({"max_abs_diff": worst, "outputs": count, "opset": opset}))
