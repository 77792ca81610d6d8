"""Issue 11, solve layer: odesolve and ODEBlock take one odernn.Solver, with the old keywords as shorthands and the
Solver's defaults; the lean step's module is the one torchdiffeq backend."""

import ast
import pathlib
import warnings

import pytest
import torch
from torch import nn

import odernn

F64 = torch.float64
PACKAGE = pathlib.Path(odernn.__file__).parent
ROOT = PACKAGE.parent


def _dyn():
    torch.manual_seed(0)
    return odernn.HBNODE(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3))).double()


def _solve_counting(dyn, *args, **kw):
    with odernn.nfe_counter(dyn) as nfe:
        out = odernn.odesolve(dyn, *args, **kw)
    return out, nfe.forward


def test_odesolve_defaults_are_the_solver_defaults():
    dyn = _dyn()
    z0 = torch.randn(4, 6, dtype=F64)
    t = torch.tensor([0.0, 0.5, 3.0], dtype=F64)
    plain, n_plain = _solve_counting(dyn, z0, t)
    given, n_given = _solve_counting(dyn, z0, t, solver=odernn.Solver())
    explicit, n_explicit = _solve_counting(dyn, z0, t, rtol=1e-3, atol=1e-4, method="dopri5")
    tight, n_tight = _solve_counting(dyn, z0, t, rtol=1e-7, atol=1e-9)  # odesolve's defaults before the Solver
    assert torch.equal(plain, given) and torch.equal(plain, explicit)
    assert n_plain == n_given == n_explicit < n_tight
    assert not torch.equal(plain, tight)


def test_shorthands_override_the_solver_fields():
    dyn = _dyn()
    z0 = torch.randn(2, 6, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    base = odernn.Solver(rtol=1e-9, atol=1e-10, method="bosh3")
    a = odernn.odesolve(dyn, z0, t, solver=base, method="rk4", step_size=0.25)
    b = odernn.odesolve(dyn, z0, t, solver=odernn.Solver(method="rk4", step_size=0.25))
    assert torch.equal(a, b)
    block = odernn.ODEBlock(dyn, solver=base, rtol=1e-4)
    assert block.solver == base.replace(rtol=1e-4)


def test_odeblock_is_odesolve_at_its_end_time():
    dyn = _dyn()
    z0 = torch.randn(3, 6, dtype=F64)
    solver = odernn.Solver(rtol=1e-6, atol=1e-8, adjoint=False)
    block = odernn.ODEBlock(dyn, t0=0.5, t1=-1.0, solver=solver)
    expected = odernn.odesolve(dyn, z0, torch.tensor([0.5, -1.0], dtype=F64), solver=solver)[:, -1]
    torch.testing.assert_close(block(z0), expected, rtol=1e-12, atol=1e-12)
    assert "t0=0.5, t1=-1.0" in repr(block) and "rtol=1e-06" in repr(block)
    assert block.state_dict().keys() == dict(block.named_parameters()).keys()


def test_bad_solver_settings_fail_at_construction_with_the_solver_message():
    dyn = _dyn()
    with pytest.raises(TypeError, match=r"ODEBlock: solver must be an odernn.Solver, got dict"):
        odernn.ODEBlock(dyn, solver={"rtol": 1e-3})
    with pytest.raises(TypeError, match=r"odesolve: solver must be an odernn.Solver, got str"):
        odernn.odesolve(dyn, torch.ones(1, 6, dtype=F64), torch.tensor([0.0, 1.0]), solver="dopri5")
    with pytest.raises(ValueError, match=r"fixed-grid method 'rk4' needs step_size"):
        odernn.ODEBlock(dyn, method="rk4")
    with pytest.raises(ValueError, match=r"rtol must be a positive number, got -1"):
        odernn.ODEBlock(dyn, rtol=-1)
    with pytest.raises(ValueError, match=r"unknown solver method 'rk45'"):
        odernn.odesolve(dyn, torch.ones(1, 6, dtype=F64), torch.tensor([0.0, 1.0]), method="rk45")


def test_the_old_module_of_the_lean_step_still_imports():
    from odernn._lean_dopri5 import LEAN_DOPRI5, LeanDopri5
    from odernn._torchdiffeq import LEAN_DOPRI5 as name, LeanDopri5 as cls
    assert (LEAN_DOPRI5, LeanDopri5) == (name, cls) == ("odernn_dopri5", cls)


def test_torchdiffeq_internals_are_imported_in_one_module_only():
    """Library and recipes reach torchdiffeq's internals only through odernn/_torchdiffeq.py."""
    importers = []
    files = list(PACKAGE.rglob("*.py")) + list((ROOT / "recipes").rglob("*.py"))
    for path in sorted(files):
        with warnings.catch_warnings():  # a module's own syntax warnings are not this test's business
            warnings.simplefilter("ignore")
            tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n.startswith("torchdiffeq._impl") for n in names):
                importers.append(path.relative_to(ROOT).as_posix())
    assert sorted(set(importers)) == ["odernn/_torchdiffeq.py"]
