"""Sobel and filter2d through autograd (issue 16, item 3): gradcheck in float64 for every
border mode and axis, image sizes smaller than the filter (extensions that reflect more
than once), filter2d's kernel gradient; Kornia as an independent peer for values and
gradients where the definitions agree; an edge-aware loss that trains.

Kornia and fastconv, where they differ (so the comparisons below map one to the other):
  - border modes: Kornia takes torch's F.pad names, fastconv SciPy's. Kornia's
    "reflect" is SciPy's "mirror", "replicate" is "nearest", "circular" is "wrap",
    "constant" is "constant" with cval 0; SciPy's "reflect" (the edge pixel repeated)
    has no Kornia name. spatial_gradient and sobel pad with "replicate" only.
  - normalisation: Kornia's normalized=True divides the Sobel kernel by 8 (the sum of
    its absolute values); fastconv's is SciPy's, unnormalised: compared with
    normalized=False.
  - sign and axes: spatial_gradient's [:, :, 0] is d/dx (fastconv axis=1), [:, :, 1]
    d/dy (axis=0), with the same sign.
  - magnitude: kornia.filters.sobel is sqrt(gx^2 + gy^2 + eps) (eps=1e-6 by default),
    fastconv's sqrt(gx^2 + gy^2); with eps=0 the two agree wherever the magnitude is
    not 0, and at 0 fastconv's gradient is Kornia's (eps > 0) limit, 0.
  - even filters: Kornia's padding="same" puts the extra row / column of an even
    kernel at the bottom / right of the padding (front (k - 1) // 2), SciPy's centre
    k // 2 puts it at the top / left: compared on odd kernels only.
"""

import pytest

torch = pytest.importorskip("torch")
from torch.autograd import gradcheck  # noqa: E402

import fastconv  # noqa: E402
import fastconv.torch as fct  # noqa: E402
from fastconv import reference as ref  # noqa: E402

MODES = ["reflect", "mirror", "nearest", "constant", "wrap"]


def rel_error(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("axis", [None, 0, 1, -1, -2])
@pytest.mark.parametrize("shape", [(2, 7, 5), (1, 2, 3, 4), (1, 1), (3, 2)])
def test_gradcheck_sobel(mode, axis, shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda t: fct.sobel(t, axis, mode, cval=0.75), (x,))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kernel_shape", [(3, 3), (2, 4), (5, 1), (1, 1)])
@pytest.mark.parametrize("shape", [(2, 6, 7), (2, 3), (1, 2, 1, 3)])
def test_gradcheck_filter2d_image_and_kernel(mode, kernel_shape, shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    k = torch.randn(*kernel_shape, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda t, w: fct.filter2d(t, w, mode, cval=-0.5), (x, k))


def test_the_plain_functions_take_the_autograd_path_for_tensors_that_require_grad():
    x = torch.randn(2, 9, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    (fastconv.sobel(x, mode="wrap").sum() + fastconv.filter2d(x, k, "mirror").sum()).backward()
    assert x.grad is not None and k.grad is not None
    # Values are the reference's on this path too.
    y = fastconv.filter2d(x, k, "mirror")
    expected = torch.from_numpy(ref.filter2d(x.detach().numpy(), k.detach().numpy(), "mirror"))
    assert rel_error(y.detach(), expected) < 1e-14
    with pytest.raises(ValueError, match="layout='NCHW'"):
        fastconv.sobel(x[None], layout="NHWC")


def test_magnitude_gradient_at_a_flat_patch_is_zero_as_kornias():
    kornia = pytest.importorskip("kornia")
    x = torch.zeros(1, 1, 6, 7, dtype=torch.float64)
    x[..., 4:, :] = torch.randn(2, 7, dtype=torch.float64)  # flat above, edges below
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    w = torch.randn_like(x)
    (fct.sobel(ours, mode="nearest") * w).sum().backward()
    (kornia.filters.sobel(theirs, normalized=False, eps=1e-12) * w).sum().backward()
    assert torch.isfinite(ours.grad).all()
    flat = (slice(None), slice(None), slice(0, 2))  # rows whose 5x5 reach sees no edge
    assert (ours.grad[flat] == 0).all() and (theirs.grad[flat] == 0).all()
    assert rel_error(ours.grad, theirs.grad) < 1e-9


# ----------------------------------------------------------------------- Kornia as peer


def test_sobel_derivatives_match_kornia_spatial_gradient():
    kornia = pytest.importorskip("kornia")
    torch.manual_seed(1)
    x = torch.randn(2, 3, 13, 11, dtype=torch.float64)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = kornia.filters.spatial_gradient(theirs, "sobel", normalized=False)  # replicate
    gx, gy = fct.sobel(ours, 1, "nearest"), fct.sobel(ours, 0, "nearest")
    assert rel_error(gx, g[:, :, 0]) < 1e-14 and rel_error(gy, g[:, :, 1]) < 1e-14
    wx, wy = torch.randn_like(x), torch.randn_like(x)
    (gx * wx + gy * wy).sum().backward()
    (g[:, :, 0] * wx + g[:, :, 1] * wy).sum().backward()
    assert rel_error(ours.grad, theirs.grad) < 1e-13


def test_sobel_magnitude_matches_kornia_with_eps_0():
    kornia = pytest.importorskip("kornia")
    torch.manual_seed(2)
    x = torch.randn(2, 1, 12, 17, dtype=torch.float64)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    m, m_ref = fct.sobel(ours, mode="nearest"), kornia.filters.sobel(theirs, False, eps=0.0)
    assert rel_error(m, m_ref) < 1e-14
    w = torch.randn_like(x)
    (m * w).sum().backward()
    (m_ref * w).sum().backward()
    assert rel_error(ours.grad, theirs.grad) < 1e-12
    # float32 too: the forward on fastconv's float32 kernel.
    m32 = fct.sobel(x.float(), mode="nearest")
    assert rel_error(m32.double(), m_ref.detach()) < 1e-6


KORNIA_BORDER = {"mirror": "reflect", "nearest": "replicate", "wrap": "circular",
                 "constant": "constant"}


@pytest.mark.parametrize("mode", sorted(KORNIA_BORDER))
@pytest.mark.parametrize("kernel_shape", [(3, 3), (5, 3), (1, 7)])
def test_filter2d_matches_kornia_values_and_gradients(mode, kernel_shape):
    kornia = pytest.importorskip("kornia")
    torch.manual_seed(3)
    x = torch.randn(2, 2, 9, 10, dtype=torch.float64)
    k = torch.randn(*kernel_shape, dtype=torch.float64)
    xo, ko = x.clone().requires_grad_(), k.clone().requires_grad_()
    xt, kt = x.clone().requires_grad_(), k[None].clone().requires_grad_()
    y = fct.filter2d(xo, ko, mode)  # cval 0
    y_ref = kornia.filters.filter2d(xt, kt, KORNIA_BORDER[mode])
    assert rel_error(y, y_ref) < 1e-14
    w = torch.randn_like(x)
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    assert rel_error(xo.grad, xt.grad) < 1e-13
    assert rel_error(ko.grad, kt.grad[0]) < 1e-13


# ----------------------------------------------------------------------- training


def test_an_edge_aware_loss_trains_a_filter():
    """Learn a 3x3 filter from the edges it leaves: the loss compares the Sobel
    magnitude of the filtered image with that of the image filtered by a hidden blur
    (gradients through sobel's magnitude, filter2d's image path and its kernel)."""
    torch.manual_seed(4)
    x = torch.rand(4, 1, 24, 24)
    blur = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    target = fct.sobel(fct.filter2d(x, blur, "reflect"), mode="reflect")
    k = torch.nn.Parameter(torch.rand(3, 3) / 9)
    opt = torch.optim.Adam([k], lr=0.02)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = (fct.sobel(fct.filter2d(x, k, "reflect"), mode="reflect") - target).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])


@pytest.mark.gpu
@pytest.mark.skipif(not fastconv.cuda_available() or not torch.cuda.is_available(),
                    reason="no CUDA GPU")
@pytest.mark.parametrize("mode", MODES)
def test_gradients_on_the_gpu_match_the_cpu(mode):
    """float32 on the GPU backend (its kernels for the forward, torch ops on CUDA
    tensors for the backward) against float64 on the CPU."""
    torch.manual_seed(5)
    x = torch.randn(2, 3, 33, 31, dtype=torch.float64)
    k = torch.randn(3, 5, dtype=torch.float64)
    w = torch.randn_like(x)
    grads = []
    for device, dtype in (("cpu", torch.float64), ("cuda", torch.float32)):
        xd = x.to(device, dtype).requires_grad_()
        kd = k.to(device, dtype).requires_grad_()
        loss = (fct.sobel(xd, None, mode, 0.5) * w.to(device, dtype)).sum() \
            + (fct.sobel(fct.filter2d(xd, kd, mode, 0.5), 1, mode) * w.to(device, dtype)).sum()
        loss.backward()
        grads.append((xd.grad.double().cpu(), kd.grad.double().cpu()))
    for ours, truth in zip(grads[1], grads[0]):
        assert rel_error(ours, truth) < 1e-5
