"""The five right-hand sides of the paper: NODE, ANODE, SONODE, HBNODE and GHBNODE.

Every dynamics is an :class:`torch.nn.Module` whose ``forward(t, z)`` is a pure function of the time ``t`` and the
*whole* ODE state ``z`` and returns ``dz/dt`` with the shape of ``z``. States are batch-first; the state copies of the
second-order models ([h, v] or [h, m]) are concatenated along dimension 1 (features for vectors, channels for images),
so a state is ``(batch, d * n, *spatial)``.

A dynamics wraps a user network ``net`` (any module). By default the network is autonomous and is called as
``net(x)``; with ``time_dependent=True`` it is called as ``net(t, x)``, where ``t`` is a scalar tensor in a plain solve
and a ``(batch,)`` tensor when each sample has its own time (inside :class:`odernn.ODERNN`).
"""

from __future__ import annotations

import abc
from typing import Callable, Optional

import torch
from torch import Tensor, nn
import torch.nn.functional as F

__all__ = ["Dynamics", "NODE", "ANODE", "SONODE", "HBNODE", "GHBNODE", "DYNAMICS", "make_dynamics"]


class Dynamics(nn.Module, abc.ABC):
    """Base class of an ODE right-hand side over a (possibly multi-copy) state.

    Subclasses set ``order`` (the number ``d`` of state copies: 1 for first-order models, 2 for [h, m] or [h, v])
    and implement :meth:`forward`.

    Args:
        net: the network ``f``.
        time_dependent: call ``net(t, x)`` instead of ``net(x)``.
    """

    order: int = 1
    #: Counters attached by :func:`odernn.nfe_counter`; empty outside such a context (checked once per evaluation).
    _nfe_counters: tuple = ()

    def __init__(self, net: nn.Module, *, time_dependent: bool = False) -> None:
        super().__init__()
        if not callable(net):
            raise TypeError(f"net must be a callable torch.nn.Module, got {type(net).__name__}")
        self.net = net
        self.time_dependent = bool(time_dependent)

    def _f(self, t: Tensor, x: Tensor) -> Tensor:
        return self.net(t, x) if self.time_dependent else self.net(x)

    # -- state layout -------------------------------------------------------------------------------------------
    def state_size(self, n: int) -> int:
        """Size along dimension 1 of the state for ``n`` hidden channels."""
        return self.order * n

    def initial_state(self, h0: Tensor, v0: Optional[Tensor] = None) -> Tensor:
        """Build the full state from the position ``h0`` (batch, n, ...) and, for second-order models, the
        velocity/momentum ``v0`` (same shape; zeros when omitted)."""
        if self.order == 1:
            if v0 is not None:
                raise ValueError(f"{type(self).__name__} is first order and takes no initial velocity")
            return h0
        if v0 is None:
            v0 = torch.zeros_like(h0)
        if v0.shape != h0.shape:
            raise ValueError(f"initial velocity has shape {tuple(v0.shape)}, expected {tuple(h0.shape)} like h0")
        return torch.cat([h0, v0], dim=1)

    def hidden(self, z: Tensor) -> Tensor:
        """The part of the state that a readout sees: ``h`` for second-order models, the whole state otherwise."""
        if self.order == 1:
            return z
        return z.narrow(1, 0, z.shape[1] // 2)

    def _split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        n = z.shape[1]
        if n % 2:
            raise ValueError(f"{type(self).__name__} needs a state with an even size along dim 1 ([h, m]); got {n}")
        return z.split(n // 2, dim=1)

    @abc.abstractmethod
    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        """``dz/dt`` at time ``t`` and state ``z`` (batch, state, ...), with the shape of ``z``."""


class NODE(Dynamics):
    r"""Neural ODE (Chen et al. 2018): :math:`h' = f(t, h)`.

    State ``z = h`` of shape (batch, n, ...).
    """

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return self._f(t, z)


class ANODE(Dynamics):
    r"""Augmented neural ODE (Dupont et al. 2019): a NODE on ``[h, 0]`` with ``augment_dim`` zero channels.

    :meth:`initial_state` appends the zero channels; the network sees and returns the whole augmented state, and
    :meth:`hidden` is the whole state (as in the paper's image classifiers, whose readout sees all channels).

    Args:
        net: network from (batch, n + augment_dim, ...) to the same shape.
        augment_dim: number of zero channels appended to the input.
    """

    def __init__(self, net: nn.Module, augment_dim: int, *, time_dependent: bool = False) -> None:
        super().__init__(net, time_dependent=time_dependent)
        if not isinstance(augment_dim, int) or augment_dim < 0:
            raise ValueError(f"augment_dim must be a non-negative int, got {augment_dim!r}")
        self.augment_dim = augment_dim

    def state_size(self, n: int) -> int:
        return n + self.augment_dim

    def initial_state(self, h0: Tensor, v0: Optional[Tensor] = None) -> Tensor:
        if v0 is not None:
            raise ValueError("ANODE is first order and takes no initial velocity")
        if self.augment_dim == 0:
            return h0
        pad = h0.new_zeros((h0.shape[0], self.augment_dim) + tuple(h0.shape[2:]))
        return torch.cat([h0, pad], dim=1)

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return self._f(t, z)


class SONODE(Dynamics):
    r"""Second-order neural ODE (Norcliffe et al. 2020): :math:`h' = v,\ v' = f(t, [h, v])`.

    State ``z = [h, v]`` of shape (batch, 2n, ...); the network maps (batch, 2n, ...) to (batch, n, ...).
    """

    order = 2

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        h, v = self._split(z)
        return torch.cat([v, self._f(t, z)], dim=1)


class HBNODE(Dynamics):
    r"""Heavy-ball neural ODE (paper eq. 10): :math:`h' = m,\ m' = -\gamma m + f(t, h)`.

    The damping is :math:`\gamma = \varepsilon\,\mathrm{sigmoid}(\omega)` with ``omega`` learnable (initialised at
    -3, :math:`\varepsilon = 1`), or a fixed value when ``gamma`` is given.

    State ``z = [h, m]`` of shape (batch, 2n, ...); the network maps (batch, n, ...) to (batch, n, ...).

    Args:
        net: the network ``f``.
        gamma: a fixed damping :math:`\gamma \ge 0`; overrides ``omega``/``epsilon`` and is not learned.
        omega: initial value of :math:`\omega`.
        epsilon: upper bound :math:`\varepsilon` of the damping.
        learn_gamma: learn :math:`\omega` (else it is a fixed buffer).
        time_dependent: call ``net(t, h)``.
    """

    order = 2

    def __init__(self, net: nn.Module, *, gamma: Optional[float] = None, omega: float = -3.0, epsilon: float = 1.0,
                 learn_gamma: bool = True, time_dependent: bool = False) -> None:
        super().__init__(net, time_dependent=time_dependent)
        if gamma is not None:
            if not gamma >= 0:
                raise ValueError(f"gamma must be >= 0, got {gamma!r}")
            self.register_buffer("_gamma_fixed", torch.tensor(float(gamma)))
            self.omega = None
        else:
            if not epsilon > 0:
                raise ValueError(f"epsilon must be > 0, got {epsilon!r}")
            self._gamma_fixed = None
            w = torch.tensor(float(omega))
            if learn_gamma:
                self.omega = nn.Parameter(w)
            else:
                self.register_buffer("omega", w)
        self.epsilon = float(epsilon)

    @property
    def gamma(self) -> Tensor:
        """The damping :math:`\\gamma` (a scalar tensor)."""
        if self._gamma_fixed is not None:
            return self._gamma_fixed
        return self.epsilon * torch.sigmoid(self.omega)

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        h, m = self._split(z)
        return torch.cat([m, self._f(t, h) - self.gamma * m], dim=1)


class GHBNODE(HBNODE):
    r"""Generalised heavy-ball neural ODE (paper eq. 15):
    :math:`h' = \sigma(m),\ m' = -\gamma m + f(t, h) - \xi h`.

    :math:`\gamma` as in :class:`HBNODE`; :math:`\xi = \mathrm{softplus}(\chi)` with ``chi`` learnable (``chi = 0``
    gives :math:`\xi = \ln 2`) or a fixed ``xi``; :math:`\sigma` is ``tanh`` by default (the paper's Silverbox test
    uses ``hardtanh(-5, 5)``).

    Args:
        net: the network ``f``.
        gamma, omega, epsilon, learn_gamma: damping, as in :class:`HBNODE`.
        xi: a fixed :math:`\xi \ge 0`; overrides ``chi`` and is not learned.
        chi: initial value of :math:`\chi`.
        learn_xi: learn :math:`\chi` (else it is a fixed buffer).
        sigma: the gate :math:`\sigma`, any elementwise callable.
        time_dependent: call ``net(t, h)``.
    """

    def __init__(self, net: nn.Module, *, gamma: Optional[float] = None, omega: float = -3.0, epsilon: float = 1.0,
                 learn_gamma: bool = True, xi: Optional[float] = None, chi: float = 0.0, learn_xi: bool = True,
                 sigma: Callable[[Tensor], Tensor] = torch.tanh, time_dependent: bool = False) -> None:
        super().__init__(net, gamma=gamma, omega=omega, epsilon=epsilon, learn_gamma=learn_gamma,
                         time_dependent=time_dependent)
        if xi is not None:
            if not xi >= 0:
                raise ValueError(f"xi must be >= 0, got {xi!r}")
            self.register_buffer("_xi_fixed", torch.tensor(float(xi)))
            self.chi = None
        else:
            self._xi_fixed = None
            c = torch.tensor(float(chi))
            if learn_xi:
                self.chi = nn.Parameter(c)
            else:
                self.register_buffer("chi", c)
        if not callable(sigma):
            raise TypeError(f"sigma must be callable, got {type(sigma).__name__}")
        self.sigma = sigma

    @property
    def xi(self) -> Tensor:
        """The skip coefficient :math:`\\xi` (a scalar tensor)."""
        if self._xi_fixed is not None:
            return self._xi_fixed
        return F.softplus(self.chi)

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        h, m = self._split(z)
        return torch.cat([self.sigma(m), self._f(t, h) - self.gamma * m - self.xi * h], dim=1)


DYNAMICS = {"node": NODE, "anode": ANODE, "sonode": SONODE, "hbnode": HBNODE, "ghbnode": GHBNODE}


def net_input_size(name: str, n: int, augment_dim: int = 0) -> int:
    """Input width n* of the network ``f`` for a dynamics name and ``n`` hidden channels."""
    return {"node": n, "anode": n + augment_dim, "sonode": 2 * n, "hbnode": n, "ghbnode": n}[name]


def net_output_size(name: str, n: int, augment_dim: int = 0) -> int:
    """Output width of the network ``f`` for a dynamics name and ``n`` hidden channels."""
    return n + augment_dim if name == "anode" else n


def check_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"dynamics must be a name or an odernn.Dynamics module, got {type(name).__name__}")
    key = name.lower()
    if key not in DYNAMICS:
        raise ValueError(f"unknown dynamics {name!r}; expected one of {sorted(DYNAMICS)} or an odernn.Dynamics module")
    return key


def make_dynamics(name: str, net: nn.Module, *, augment_dim: int = 0, **kwargs) -> Dynamics:
    """Wrap ``net`` in the dynamics called ``name`` (``"node" | "anode" | "sonode" | "hbnode" | "ghbnode"``).

    Keyword arguments go to the dynamics' constructor (e.g. ``omega``, ``chi``, ``sigma``, ``time_dependent``).

    Raises:
        ValueError: for an unknown name.
    """
    key = check_name(name)
    if key == "anode":
        return ANODE(net, augment_dim, **kwargs)
    return DYNAMICS[key](net, **kwargs)


#: ``forward`` methods of the built-in dynamics, which read ``t`` only through a time-dependent net: solvers skip
#: forming absolute times for them otherwise.
BUILTIN_FORWARDS = frozenset(c.forward for c in (NODE, ANODE, SONODE, HBNODE, GHBNODE))
