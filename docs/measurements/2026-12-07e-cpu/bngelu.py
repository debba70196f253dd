"""Prototype: BatchNorm (training) + GELU(tanh) as one autograd.Function with a closed-form backward."""
import math
import torch
import torch.nn.functional as F


def _gelu_tanh_and_grad(y):
    k = math.sqrt(2 / math.pi)
    inner = k * (y + 0.044715 * y * y * y)
    t = torch.tanh(inner)
    a = 0.5 * y * (1 + t)
    da = 0.5 * (1 + t) + 0.5 * y * (1 - t * t) * k * (1 + 3 * 0.044715 * y * y)
    return a, da


class BatchNormGELU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        xf = x.float()
        var, mean = torch.var_mean(xf, dim=(0, 2, 3), correction=0, keepdim=True)
        rstd = torch.rsqrt(var + eps)
        y = (xf - mean) * rstd * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
        a = F.gelu(y, approximate="tanh")
        ctx.save_for_backward(x, mean, rstd, weight, bias)
        return a.to(x.dtype), mean.flatten(), var.flatten()

    @staticmethod
    def backward(ctx, g, _gm, _gv):
        x, mean, rstd, weight, bias = ctx.saved_tensors
        w = weight.view(1, -1, 1, 1)
        xhat = (x.float() - mean) * rstd
        _, da = _gelu_tanh_and_grad(xhat * w + bias.view(1, -1, 1, 1))
        gy = g.float() * da
        m = x.numel() // x.shape[1]
        sum_gy = gy.sum(dim=(0, 2, 3), keepdim=True)
        sum_gy_xhat = (gy * xhat).sum(dim=(0, 2, 3), keepdim=True)
        gx = (w * rstd) * (gy - sum_gy / m - xhat * (sum_gy_xhat / m))
        return gx.to(x.dtype), sum_gy_xhat.flatten(), sum_gy.flatten(), None


class FusedBNGELU(torch.nn.BatchNorm2d):
    def forward(self, x):
        if not self.training:
            return F.gelu(super().forward(x), approximate="tanh")
        a, mean, var = BatchNormGELU.apply(x, self.weight, self.bias, self.eps)
        with torch.no_grad():
            m = x.numel() // x.shape[1]
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_((var.detach() * m / (m - 1)).to(self.running_var.dtype), self.momentum)
            self.num_batches_tracked += 1
        return a
