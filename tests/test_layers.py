import pytest
import torch
from torch import nn

from espnet_lowrank.layers import (
    LowRankConv2d,
    LowRankLinear,
    LowRankPointwiseConv1d,
    draw_dense_weight,
    spectral_factors,
)


def _dense(kind, d_in, d_out):
    torch.manual_seed(0)
    return nn.Linear(d_in, d_out) if kind == "linear" else nn.Conv1d(d_in, d_out, 1)


def _input(kind, d_in):
    return torch.randn(3, 7, d_in) if kind == "linear" else torch.randn(3, d_in, 7)


LOW_RANK = {"linear": LowRankLinear, "conv": LowRankPointwiseConv1d}


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("d_in,d_out", [(16, 24), (24, 16), (20, 20)])
def test_full_rank_svd_reproduces_dense_layer(kind, d_in, d_out):
    dense = _dense(kind, d_in, d_out)
    low = LOW_RANK[kind].from_dense(dense, rank=min(d_in, d_out))
    x = _input(kind, d_in)
    torch.testing.assert_close(low(x), dense(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(low.to_dense_weight(), dense.weight, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_merge_gives_back_the_exact_function(kind):
    low = LOW_RANK[kind](12, 20, rank=4)
    merged = low.to_dense()
    assert type(merged) is type(_dense(kind, 12, 20))
    x = _input(kind, 12)
    torch.testing.assert_close(merged(x), low(x), atol=1e-5, rtol=1e-5)


def test_truncated_svd_is_the_best_rank_r_approximation():
    weight = torch.randn(30, 20, dtype=torch.float64)
    u, v = spectral_factors(weight, 5)
    singular = torch.linalg.svdvals(weight)
    error = torch.linalg.matrix_norm(weight - u @ v)  # Eckart-Young: trailing singular values
    torch.testing.assert_close(error, singular[5:].square().sum().sqrt())


def test_spectral_factors_are_balanced():
    u, v = spectral_factors(torch.randn(40, 24), 8)
    gram_u, gram_v = u.T @ u, v @ v.T
    torch.testing.assert_close(gram_u, gram_v, atol=1e-4, rtol=1e-4)
    off_diagonal = gram_u - torch.diag(torch.diagonal(gram_u))
    assert off_diagonal.abs().max() < 1e-4


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("init", ["svd", "random"])
def test_shapes_and_gradients(kind, init):
    low = LOW_RANK[kind](16, 32, rank=6, init=init)
    assert low.V.shape == (6, 16) and low.U.shape == (32, 6) and low.bias.shape == (32,)
    x = _input(kind, 16).requires_grad_()
    y = low(x)
    assert y.shape == ((3, 7, 32) if kind == "linear" else (3, 32, 7))
    y.square().sum().backward()
    for param in (low.U, low.V, low.bias, x):
        assert param.grad is not None and param.grad.abs().sum() > 0


@pytest.mark.parametrize("bias", [True, False])
def test_parameter_and_mac_counts_follow_the_formula(bias):
    low = LowRankLinear(256, 1024, rank=64, bias=bias)
    expected = 64 * (256 + 1024) + (1024 if bias else 0)
    assert low.num_parameters() == expected == sum(p.numel() for p in low.parameters())
    assert low.dense_num_parameters() == 256 * 1024 + (1024 if bias else 0)
    assert low.macs_per_position() == 64 * (256 + 1024)
    assert low.dense_macs_per_position() == 256 * 1024


@pytest.mark.parametrize("rank", [0, -1, 17])
def test_rank_out_of_range_is_refused(rank):
    with pytest.raises(ValueError, match=f"rank={rank}"):
        LowRankLinear(16, 32, rank=rank)


def test_unknown_init_names_are_refused():
    with pytest.raises(ValueError, match="init='orthogonal'"):
        LowRankLinear(16, 32, rank=4, init="orthogonal")
    with pytest.raises(ValueError, match="dense_init='glorot'"):
        LowRankLinear(16, 32, rank=4, dense_init="glorot")


def test_espnet_reinit_restores_spectral_factors_and_keeps_bias():
    low = LowRankLinear(32, 48, rank=8, dense_init="xavier_uniform")
    nn.init.xavier_uniform_(low.U)  # what ESPnet's --init does to every matrix
    nn.init.xavier_uniform_(low.V)
    nn.init.zeros_(low.bias)
    low.espnet_initialization_fn()
    torch.testing.assert_close(low.U.T @ low.U, low.V @ low.V.T, atol=1e-4, rtol=1e-4)
    assert torch.all(low.bias == 0)


def test_svd_init_starts_from_the_requested_dense_scale():
    torch.manual_seed(0)
    low = LowRankLinear(512, 512, rank=512, dense_init="xavier_uniform")
    dense = draw_dense_weight(512, 512, "xavier_uniform")
    ratio = low.to_dense_weight().std() / dense.std()
    assert 0.95 < ratio < 1.05


@pytest.mark.parametrize("kernel,stride,padding", [(3, 2, 0), (5, 3, 0), ((3, 1), 1, (1, 0))])
def test_full_rank_conv2d_reproduces_the_dense_convolution(kernel, stride, padding):
    torch.manual_seed(0)
    dense = nn.Conv2d(6, 8, kernel, stride, padding)
    low = LowRankConv2d.from_dense(dense, rank=8)  # full rank: min(8, 6·kh·kw) = 8
    x = torch.randn(2, 6, 17, 13)
    torch.testing.assert_close(low(x), dense(x), atol=1e-5, rtol=1e-5)
    merged = low.to_dense()
    assert (merged.kernel_size, merged.stride, merged.padding) == (
        dense.kernel_size, dense.stride, dense.padding)
    torch.testing.assert_close(merged.weight, dense.weight, atol=1e-5, rtol=1e-5)


def test_conv2d_shapes_gradients_and_counts():
    low = LowRankConv2d(16, 32, rank=4, kernel_size=3, stride=2)
    assert low.V.shape == (4, 16 * 9) and low.U.shape == (32, 4)
    x = torch.randn(2, 16, 21, 19, requires_grad=True)
    y = low(x)
    assert y.shape == (2, 32, 10, 9)
    y.square().sum().backward()
    for param in (low.U, low.V, low.bias, x):
        assert param.grad is not None and param.grad.abs().sum() > 0
    assert low.num_parameters() == 4 * (16 * 9 + 32) + 32 == sum(p.numel() for p in low.parameters())
    assert low.dense_num_parameters() == 32 * 16 * 9 + 32
    assert low.macs_per_position() == 4 * (16 * 9 + 32)


def test_truncated_conv2d_is_the_best_approximation_of_the_reshaped_kernel():
    torch.manual_seed(0)
    dense = nn.Conv2d(8, 12, 3)
    low = LowRankConv2d.from_dense(dense, rank=3)
    matrix = dense.weight.detach().reshape(12, -1)
    singular = torch.linalg.svdvals(matrix)
    error = torch.linalg.matrix_norm(matrix - low.to_dense_weight().reshape(12, -1))
    torch.testing.assert_close(error, singular[3:].square().sum().sqrt(), atol=1e-5, rtol=1e-4)
