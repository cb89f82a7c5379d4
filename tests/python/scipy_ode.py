"""SciPy's solve_ivp(method="RK45") on the problems of tests/ops/ode.cpp: an independent Dormand-Prince 5(4)
(Debian python3-scipy) for zoo's dopri5 to be compared with. Prints one JSON object:
{problem: {tolerance: {"y": [...], "steps": accepted steps, "nfev": evaluations}}}."""
import json
import math
import sys

import numpy as np
from scipy.integrate import solve_ivp

# name -> (f(t, y), y0, t0, t1); the same problems, with the same names, as the C++ test.
PROBLEMS = {
    "decay": (lambda t, y: -0.5 * y, [1.0, 2.0], 0.0, 3.0),
    "rotation": (lambda t, y: np.array([y[1], -y[0]]), [1.0, 0.0], 0.0, 2 * math.pi),
    "logistic": (lambda t, y: y * (1 - y), [0.1], 0.0, 5.0),
    "time-dependent": (lambda t, y: math.cos(t) * y, [1.0], 0.0, 4.0),
}


def main():
    tolerances = [float(t) for t in sys.argv[1:]] or [1e-4, 1e-7]
    out = {}
    for name, (f, y0, t0, t1) in PROBLEMS.items():
        out[name] = {}
        for tol in tolerances:
            sol = solve_ivp(f, (t0, t1), np.array(y0, dtype=np.float64), method="RK45", rtol=tol, atol=tol)
            assert sol.success, sol.message
            out[name][repr(tol)] = {"y": sol.y[:, -1].tolist(), "steps": len(sol.t) - 1, "nfev": int(sol.nfev)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
