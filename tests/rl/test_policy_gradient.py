"""The maths of MAML for RL against independent references, in float64: GAE, the baseline, the inner
policy-gradient step (by hand) and the second-order meta-gradient (finite differences)."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from lightning_meta import functional
from lightning_meta.rl import CategoricalMLPPolicy, GaussianMLPPolicy, MAMLPolicyGradient, Trajectories
from lightning_meta.rl.maml_pg import reinforce_loss
from lightning_meta.rl.returns import discounted_returns, gae, gae_recursion, linear_baseline


def _random(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _hand_gae(rewards, values, mask, gamma, lam):
    """A plain Python loop over one trajectory at a time (the value after the last reached step is 0)."""
    horizon, n = len(rewards), len(rewards[0])
    out = [[0.0] * n for _ in range(horizon)]
    for j in range(n):
        last = max(t for t in range(horizon) if mask[t][j]) if any(mask[t][j] for t in range(horizon)) else -1
        running = 0.0
        for t in range(last, -1, -1):
            next_value = values[t + 1][j] if t + 1 <= last else 0.0
            running = rewards[t][j] + gamma * next_value - values[t][j] + gamma * lam * running
            out[t][j] = running
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gae_equals_the_hand_written_recursion(dtype):
    rewards, values = _random(6, 4, seed=0), _random(6, 4, seed=1)
    mask = torch.ones(6, 4, dtype=torch.float64)
    mask[3:, 1] = 0  # trajectory 1 terminated after 3 steps
    expected = _hand_gae(rewards.tolist(), values.tolist(), mask.tolist(), 0.9, 0.7)
    for estimate in (gae, gae_recursion):  # TorchRL's (float32) or ours, and ours
        got = estimate(rewards.to(dtype), values.to(dtype), mask.to(dtype), gamma=0.9, lam=0.7).double()
        tolerance = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
        torch.testing.assert_close(got, expected, **tolerance)
    # lambda = 1 with values 0: discounted returns
    zeros = torch.zeros_like(values)
    torch.testing.assert_close(
        gae(rewards, zeros, mask, gamma=0.9, lam=1.0), discounted_returns(rewards, mask, gamma=0.9)
    )


def test_linear_baseline_is_the_ridge_regression_on_the_paper_features():
    obs, returns, mask = _random(5, 3, 2, seed=2), _random(5, 3, seed=3), torch.ones(5, 3, dtype=torch.float64)
    t = torch.arange(5, dtype=torch.float64).view(5, 1, 1).expand(5, 3, 1) / 100
    x = torch.cat([obs, obs**2, t, t**2, t**3, torch.ones_like(t)], dim=-1).reshape(15, 8)
    w = torch.linalg.solve(x.T @ x + 1e-5 * torch.eye(8, dtype=torch.float64), x.T @ returns.reshape(15, 1))
    torch.testing.assert_close(linear_baseline(obs, returns, mask), (x @ w).reshape(5, 3))


def test_inner_policy_gradient_step_equals_the_hand_computation():
    """A linear Gaussian policy mu = W s + b, sigma = exp(log_std), on a fixed 4-step trajectory with advantages."""
    policy = GaussianMLPPolicy(observation_size=2, action_size=1, hidden=[], init_std=0.7).double()
    params = {name: p.detach().clone() for name, p in policy.named_parameters()}
    obs, actions, advantages = _random(4, 2, seed=4), _random(4, 1, seed=5), _random(4, seed=6)
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)  # the last step is past the episode's end
    targets = torch.cat([actions, advantages[:, None], mask[:, None]], dim=-1)
    lr = 0.3
    loss_fn = functools.partial(reinforce_loss, policy=policy)
    adapted = functional.inner_loop(policy, params, obs, targets, loss_fn=loss_fn,
                                    steps=1, lr=lr)  # fmt: skip
    # by hand: loss = -(1/3) sum_t A_t log N(a_t; W s_t + b, sigma^2) over the 3 reached steps
    w, b, log_std = params["mean.0.weight"], params["mean.0.bias"], params["log_std"]
    sigma = math.exp(float(log_std))
    grad_w, grad_b, grad_log_std = torch.zeros(1, 2, dtype=torch.float64), 0.0, 0.0
    for t in range(3):
        mu = float(w[0] @ obs[t] + b[0])
        z = (float(actions[t]) - mu) / sigma
        a = float(advantages[t])
        grad_w -= a * z / sigma * obs[t] / 3
        grad_b -= a * z / sigma / 3
        grad_log_std -= a * (z * z - 1) / 3
    torch.testing.assert_close(adapted["mean.0.weight"], w - lr * grad_w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(adapted["mean.0.bias"], b - lr * grad_b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(adapted["log_std"], log_std - lr * grad_log_std, rtol=1e-12, atol=1e-12)


def test_categorical_log_prob_and_gumbel_sampling():
    policy = CategoricalMLPPolicy(observation_size=3, n_actions=4, hidden=[5]).double()
    logits = policy(_random(7, 3, seed=7))
    actions = torch.tensor([[0.0], [1.0], [2.0], [3.0], [0.0], [1.0], [2.0]], dtype=torch.float64)
    expected = torch.distributions.Categorical(logits=logits).log_prob(actions[:, 0].long())
    torch.testing.assert_close(policy.log_prob(logits, actions), expected)
    noise = policy.draw_noise(torch.Generator().manual_seed(0), (20000,))
    frequencies = (
        torch.bincount(policy.sample(logits[:1].expand(20000, 4), noise)[:, 0].long(), minlength=4).double() / 20000
    )
    torch.testing.assert_close(frequencies, torch.softmax(logits[0], -1), atol=0.015, rtol=0)


def test_gaussian_log_prob_matches_torch_distributions():
    policy = GaussianMLPPolicy(observation_size=2, action_size=3, hidden=[4], init_std=0.5).double()
    out = policy(_random(5, 2, seed=8))
    actions = _random(5, 3, seed=9)
    mean, log_std = out.chunk(2, -1)
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(actions).sum(-1)
    torch.testing.assert_close(policy.log_prob(out, actions), expected)


def _fixed_trajectories(seed, tasks=2, horizon=4, n=3):
    return Trajectories(
        observations=_random(tasks, horizon, n, 2, seed=seed),
        actions=_random(tasks, horizon, n, 1, seed=seed + 1),
        rewards=_random(tasks, horizon, n, seed=seed + 2),
        mask=torch.ones(tasks, horizon, n, dtype=torch.float64),
    )


def _meta_loss(learner, params, first_order):
    adapted = learner.adapt_step(params, _fixed_trajectories(10), first_order=first_order)
    return learner.outer_losses(adapted, _fixed_trajectories(20)).mean()


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_second_order_meta_gradient_equals_finite_differences(strategy):
    """Fixed pre- and post-adaptation trajectories make the meta-loss a deterministic function of the weights."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(observation_size=2, action_size=1, hidden=[3], init_std=0.8).double()
    learner = MAMLPolicyGradient(policy, inner_lr=0.5, gamma=0.9, gae_lambda=0.8, vectorize=strategy)
    params = dict(policy.named_parameters())
    grads = torch.autograd.grad(_meta_loss(learner, params, first_order=False), list(params.values()))
    eps = 1e-6
    for (name, p), g in zip(params.items(), grads, strict=True):
        numeric = torch.zeros_like(p)
        for i in range(p.numel()):
            shifted = []
            for sign in (1, -1):
                q = {k: v.detach().clone() for k, v in params.items()}
                q[name].view(-1)[i] += sign * eps
                with torch.no_grad():
                    shifted.append(float(_meta_loss(learner, q, first_order=False)))
            numeric.view(-1)[i] = (shifted[0] - shifted[1]) / (2 * eps)
        torch.testing.assert_close(g, numeric, rtol=1e-6, atol=1e-8, msg=name)
    first_order = torch.autograd.grad(_meta_loss(learner, params, first_order=True), list(params.values()))
    assert any(not torch.allclose(a, b, rtol=1e-3) for a, b in zip(grads, first_order, strict=True))
