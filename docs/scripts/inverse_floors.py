"""The data's own floors of the two shipped inverse problems (docs/method.md, "How far the data bend u").

burgers1d-inverse. The best estimate from the 200 noisy measurements satisfies the Burgers equation and the
file's initial and end values exactly and fits the data in least squares. Linearised in nu about 0.1, w = du/dnu solves

    w_t + (u w)_x = nu w_xx + u_xx,   w(x, 0) = 0,   w(-1, t) = w(1, t) = 0

(the conditions are data written with nu = 0.1, not functions of nu), so nu_hat = 0.1 + <w, d - u> / <w, w>
over the measurements. The equation is then solved with nu_hat by the method of lines, and its relative
L2 distance from the exact solution is the floor.

heat10-inverse. Its exact solutions for any k form the family exp(-k pi^2 t / 4) mean(sin(pi x / 2)): k_hat
fits that family to the 400 measurements in least squares, and the family's u at k_hat, against the exact
one (k = 1) at 200,000 uniform points, is the floor. Run from the repository's root (about 5 s):

    python docs/scripts/inverse_floors.py
"""

import numpy as np
from scipy.integrate import solve_ivp
from scipy.interpolate import RegularGridInterpolator
from scipy.optimize import minimize_scalar

NU = 0.1
TIMES = np.linspace(0, 1, 201)


def exact(x, t):
    return 0.5 - 0.5 * np.tanh((x - t / 2) / (4 * NU))


def exact_xx(x, t):
    z = (x - t / 2) / (4 * NU)
    return np.tanh(z) / np.cosh(z) ** 2 / (4 * NU) ** 2


def sensitivity(points: int) -> RegularGridInterpolator:
    """w = du/dnu at nu = 0.1 on a grid of ``points`` in x, by centred differences and BDF in t."""
    x = np.linspace(-1, 1, points)
    h = x[1] - x[0]

    def rhs(t, w):
        w = np.concatenate([[0.0], w, [0.0]])
        flux = exact(x, t) * w
        return (-(flux[2:] - flux[:-2]) / (2 * h) + NU * (w[2:] - 2 * w[1:-1] + w[:-2]) / h**2
                + exact_xx(x[1:-1], t))

    solution = solve_ivp(rhs, (0, 1), np.zeros(points - 2), t_eval=TIMES, method="BDF", rtol=1e-9, atol=1e-12)
    return RegularGridInterpolator((x, TIMES), np.pad(solution.y, ((1, 1), (0, 0))))


def burgers_error(nu: float, points: int) -> float:
    """Relative L2 distance from the exact solution of Burgers' equation solved with ``nu`` and the
    file's initial and end values (those of nu = 0.1), on ``points`` in x."""
    x = np.linspace(-1, 1, points)
    h = x[1] - x[0]

    def rhs(t, v):
        u = np.concatenate([[exact(-1.0, t)], v, [exact(1.0, t)]])
        return -u[1:-1] * (u[2:] - u[:-2]) / (2 * h) + nu * (u[2:] - 2 * u[1:-1] + u[:-2]) / h**2

    solution = solve_ivp(rhs, (0, 1), exact(x[1:-1], 0), t_eval=TIMES, method="BDF", rtol=1e-10, atol=1e-12)
    reference = exact(*np.meshgrid(x[1:-1], TIMES, indexing="ij"))
    return np.linalg.norm(solution.y - reference) / np.linalg.norm(reference)


def measurements(path: str) -> dict:
    """A data file's columns by name (its comment lines skipped)."""
    lines = [line for line in open(path) if not line.startswith("#")]
    return dict(zip(lines[0].strip().split(","), np.loadtxt(lines[1:], delimiter=",").T))


def heat_family(k: float, x: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.exp(-k * np.pi**2 * t / 4) * np.mean(np.sin(np.pi * x / 2), axis=1)


def heat10_floor() -> None:
    columns = measurements("problems/heat10-inverse-data.csv")
    x, t = np.stack([columns[f"x{i}"] for i in range(1, 11)], axis=1), columns["t"]
    misfit = lambda k: np.sum((heat_family(k, x, t) - columns["u"]) ** 2)
    k_hat = minimize_scalar(misfit, bounds=(0.5, 1.5), method="bounded", options={"xatol": 1e-10}).x
    generator = np.random.default_rng(0)
    X, T = generator.uniform(-1, 1, (200_000, 10)), generator.uniform(0, 1, 200_000)
    exact_u = heat_family(1.0, X, T)
    floor = np.linalg.norm(heat_family(k_hat, X, T) - exact_u) / np.linalg.norm(exact_u)
    print(f"heat10-inverse: k_hat = {k_hat:.6f}, the family's u at k_hat {floor:.2e} from the exact one")


def burgers_floor() -> None:
    columns = measurements("problems/burgers1d-inverse-data.csv")
    x, t, measured = columns["x"], columns["t"], columns["u"]
    for points in (401, 801):
        w = sensitivity(points)(np.c_[x, t])
        nu_hat = NU + w @ (measured - exact(x, t)) / (w @ w)
        print(f"burgers1d-inverse, w on {points} points: nu_hat = {nu_hat:.7f}")
    print(f"burgers1d-inverse: the scheme's own error at nu = 0.1 (1,601 points) {burgers_error(NU, 1601):.2e}; "
          f"Burgers solved with nu_hat {burgers_error(nu_hat, 1601):.2e} from the exact solution (the floor)")


def main() -> None:
    burgers_floor()
    heat10_floor()


if __name__ == "__main__":
    main()
