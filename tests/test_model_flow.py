"""Flow-matching math on analytic cases."""

import torch

from lingvla.model import flow, sampling


def test_target_velocity_is_the_time_derivative_of_the_path():
    g = torch.Generator().manual_seed(0)
    actions, noise = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    h = 1e-6
    a64, n64 = actions.double(), noise.double()
    finite_diff = (flow.interpolate(a64, n64, t + h) - flow.interpolate(a64, n64, t - h)) / (2 * h)
    torch.testing.assert_close(finite_diff, flow.target_velocity(a64, n64), atol=1e-6, rtol=1e-6)
    # Endpoints: t = 1 is pure noise, t = 0 the data.
    torch.testing.assert_close(flow.interpolate(actions, noise, torch.ones(3)), noise)
    torch.testing.assert_close(flow.interpolate(actions, noise, torch.zeros(3)), actions)


def test_euler_with_the_exact_velocity_lands_on_a_point_target():
    # For data concentrated at A, the ideal velocity is u(x, t) = (x - A) / t; Euler integrates it
    # exactly (x_t - A shrinks by (t + dt) / t each step), so 10 steps reach A from any noise.
    g = torch.Generator().manual_seed(1)
    target = torch.randn(2, 50, 7, generator=g, dtype=torch.float64)
    noise = torch.randn(2, 50, 7, generator=g, dtype=torch.float64)
    out = sampling.euler_sample(lambda x, t: (x - target) / t.double()[:, None, None], noise, 10)
    torch.testing.assert_close(out, target, atol=1e-6, rtol=0)  # t travels as float32


def test_euler_linear_velocity_matches_its_closed_form():
    # dx/dt = c: x(0) = x(1) - c regardless of step count.
    noise = torch.ones(1, 2, 3)
    c = torch.full((1, 2, 3), 0.25)
    for steps in (1, 3, 10):
        out = sampling.euler_sample(lambda x, t: c, noise, steps)
        torch.testing.assert_close(out, noise - c)


def test_euler_visits_times_from_one_down():
    seen = []
    sampling.euler_sample(lambda x, t: seen.append(round(float(t[0]), 6)) or torch.zeros_like(x),
                      torch.zeros(1, 1, 1), 4)
    assert seen == [1.0, 0.75, 0.5, 0.25]


def test_time_sampling_distributions():
    g = torch.Generator().manual_seed(2)
    t = flow.sample_time(200_000, "beta", g)
    assert 0.001 <= t.min() and t.max() <= 1.0
    # 0.999 * Beta(1.5, 1) + 0.001: mean 0.999 * 0.6 + 0.001, P(t < 0.5) = ((0.5-0.001)/0.999)^1.5
    assert abs(t.mean().item() - 0.6004) < 3e-3
    p = ((0.5 - 0.001) / 0.999) ** 1.5
    assert abs((t < 0.5).float().mean().item() - p) < 5e-3
    u = flow.sample_time(200_000, "uniform", g)
    assert abs(u.mean().item() - 0.5) < 3e-3
    # General Beta(a, b) also supported.
    tb = flow.sample_time(100_000, "beta", g, alpha=2.0, beta=2.0)
    assert abs(tb.mean().item() - (0.999 * 0.5 + 0.001)) < 5e-3


def test_one_euler_loop_takes_step_rules():
    # A step rule sees the loop's times and step sizes; the plain rule is the default.
    noise = torch.randn(2, 4, 3)
    seen = []

    def recording(x, t, dt, velocity):
        seen.append((round(t, 6), round(dt, 6)))
        return sampling.euler_step(x, t, dt, velocity)

    def velocity(x, t):
        return torch.ones_like(x)

    plain = sampling.euler_sample(velocity, noise, 4)
    ruled = sampling.euler_sample(velocity, noise, 4, step=recording)
    assert torch.equal(plain, ruled) and torch.allclose(plain, noise - 1)
    assert seen == [(1.0, -0.25), (0.75, -0.25), (0.5, -0.25), (0.25, -0.25)]
    # inpainting with full weight lands exactly on the target; with zero weight it is plain Euler
    target = torch.randn(2, 4, 3)
    full = sampling.euler_sample(velocity, noise, 4, step=sampling.inpaint_step(noise, target, torch.ones(1)))
    assert torch.allclose(full, target)
    free = sampling.euler_sample(velocity, noise, 4, step=sampling.inpaint_step(noise, target, torch.zeros(1)))
    assert torch.equal(free, plain)
