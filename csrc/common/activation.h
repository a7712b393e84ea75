// activation.h: the activations fused into conv2d's epilogue and their derivatives,
// written once for both backends. The derivative is taken from the activation's
// output y, which is what the forward pass keeps.
#pragma once
#include <cmath>

#include "params.h"
#include "shapes.h"  // FC_HD

namespace fastconv {

template <typename T>
FC_HD T activate(Activation act, T z) {
    using std::exp;
    using std::tanh;
    switch (act) {
        case Activation::Relu: return z > T(0) ? z : (z != z ? z : T(0));  // NaN passes
        case Activation::Tanh: return tanh(z);
        case Activation::Sigmoid: return T(1) / (T(1) + exp(-z));
        default: return z;
    }
}

// d act / d z expressed through y = act(z).
template <typename T>
FC_HD T activate_grad(Activation act, T y) {
    switch (act) {
        case Activation::Relu: return y > T(0) ? T(1) : (y != y ? y : T(0));
        case Activation::Tanh: return T(1) - y * y;
        case Activation::Sigmoid: return y * (T(1) - y);
        default: return T(1);
    }
}

}  // namespace fastconv
