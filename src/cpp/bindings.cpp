// Python bindings of the C++ core: translation only. Each function checks its
// arguments at the boundary (dtype, shape, id range), converts what can be converted
// without changing meaning (other float widths, byte order, strides), allocates the
// outputs, releases the GIL and calls the kernel. The names and signatures are those
// of the NumPy twins in fastlm/reference.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>


#include <unistd.h>

#include <cmath>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "allocator.h"
#include "denormals.h"
#include "errors.h"
#include "kernels.h"
#include "parallel.h"
#include "windows.h"

namespace py = pybind11;
using namespace fastlm;

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using IdArray = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& shape) {
    std::ostringstream out;
    out << "(";
    for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
    out << (shape.size() == 1 ? ",)" : ")");
    return out.str();
}

Shape shape_of(const py::array& a) { return Shape(a.shape(), a.shape() + a.ndim()); }

void require(bool ok, const std::string& message) {
    if (!ok) throw py::value_error(message);
}

py::array as_array(const py::handle& obj, const char* name) {
    if (obj.is_none()) throw py::type_error(std::string(name) + " must be an array, got None");
    py::array a = py::array::ensure(obj);
    if (!a) throw py::type_error(std::string(name) + " must be an array");
    return a;
}

// A float input of the given ndim, as a C-contiguous native float32 array (converted if needed).
FloatArray float_input(const py::handle& obj, const char* name, py::ssize_t ndim) {
    py::array a = as_array(obj, name);
    if (a.dtype().kind() != 'f')
        throw py::type_error(std::string(name) + " must be a float array, got dtype " +
                             py::str(a.dtype()).cast<std::string>());
    require(a.ndim() == ndim, std::string(name) + " must be " + std::to_string(ndim) + "-D, got shape " +
                                  shape_str(shape_of(a)));
    return FloatArray::ensure(a);
}

void require_shape(const py::array& a, const char* name, const Shape& expected) {
    require(shape_of(a) == expected,
            std::string(name) + " must have shape " + shape_str(expected) + ", got " + shape_str(shape_of(a)));
}

// The first id of values outside [0, limit), as an error message; values of any integer type.
template <typename T>
void check_id_range(const py::array& a, const char* name, int64_t limit) {
    const auto typed = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(a);
    const T* v = typed.data();
    for (int64_t i = 0; i < int64_t(typed.size()); ++i) {
        if (v[i] < T(0) || (v[i] > T(0) && uint64_t(v[i]) >= uint64_t(limit))) {
            std::ostringstream out;
            out << name << " holds id " << v[i] << " at flat index " << i << ", outside [0, " << limit << ")";
            throw py::value_error(out.str());
        }
    }
}

// Token ids: any integer dtype, range-checked into [0, limit), returned as int32.
IdArray id_input(const py::handle& obj, const char* name, int64_t limit) {
    py::array a = as_array(obj, name);
    const char kind = a.dtype().kind();
    if (kind != 'i' && kind != 'u')
        throw py::type_error(std::string(name) + " must be an integer array of token ids, got dtype " +
                             py::str(a.dtype()).cast<std::string>());
    if (kind == 'u')
        check_id_range<uint64_t>(a, name, limit);
    else
        check_id_range<int64_t>(a, name, limit);
    return IdArray::ensure(a);
}

// An array updated in place: it must already be what the kernel writes, since a
// converted copy would leave the caller's array untouched.
py::array_t<float> inplace_float(const py::handle& obj, const char* name) {
    py::array a = as_array(obj, name);
    const std::string what = std::string(name) + " is updated in place and must be a writeable C-contiguous "
                                                 "float32 array, but it is ";
    if (!a.dtype().equal(py::dtype::of<float>()))
        throw py::type_error(what + "of dtype " + py::str(a.dtype()).cast<std::string>());
    if (!(a.flags() & py::array::c_style)) throw py::value_error(what + "not C-contiguous");
    if (!a.writeable()) throw py::value_error(what + "read-only");
    return py::array_t<float>(a);
}

// A new C-contiguous float32 array whose data starts on a 64-byte cache line (NumPy's
// allocator gives 16): for outputs whose rows two threads write in parts at the same
// time (the LSTM's gates by column panels, its rows' states by rows), so that they share
// a cache line only where a row boundary falls inside one.
py::array_t<float> cache_aligned_floats(const std::vector<int64_t>& shape) {
    constexpr int64_t kLineFloats = 64 / sizeof(float);
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    py::array_t<float> buffer(n + kLineFloats);
    const auto address = reinterpret_cast<std::uintptr_t>(buffer.mutable_data());
    const int64_t offset = int64_t((64 - address % 64) % 64 / sizeof(float));
    std::vector<int64_t> strides(shape.size());
    int64_t stride = sizeof(float);
    for (size_t i = shape.size(); i-- > 0;) {
        strides[i] = stride;
        stride *= shape[i];
    }
    return py::array_t<float>(shape, strides, buffer.mutable_data() + offset, buffer);
}

// The stop check of long kernels: runs Python's signal handlers (main thread only, so
// Ctrl-C reaches a generate that would otherwise run for minutes); true when one raised.
bool python_signal_raised() {
    py::gil_scoped_acquire acquire;
    return PyErr_CheckSignals() != 0;
}

// Around every kernel call: other Python threads run meanwhile, the kernel uses the
// process-wide thread count whichever thread calls it, and subnormals are flushed.
struct ProcessThreadCount {
    ProcessThreadCount() { use_process_thread_count(); }
};

struct KernelScope {
    ProcessThreadCount threads;  // first: FlushDenormals reaches the workers of that count
    py::gil_scoped_release release;
    FlushDenormals flush;
};

void require_nonempty(int64_t batch, int64_t steps) {
    require(batch > 0, "batch is empty (B = 0)");
    require(steps > 0, "sequence length is 0 (T = 0)");
}

// ------------------------------------------------------------------ embedding

py::array_t<float> py_embedding_forward(const py::handle& weight_obj, const py::handle& ids_obj) {
    const FloatArray weight = float_input(weight_obj, "weight", 2);
    const int64_t V = weight.shape(0), E = weight.shape(1);
    const IdArray ids = id_input(ids_obj, "ids", V);
    require(ids.ndim() >= 1 && ids.size() > 0, "ids must be a non-empty array");
    Shape out_shape = shape_of(ids);
    out_shape.push_back(E);
    py::array_t<float> out(out_shape);
    {
        KernelScope scope;
        kernels().embedding_forward(weight.data(), E, ids.data(), ids.size(), out.mutable_data());
    }
    return out;
}

py::array_t<float> py_embedding_backward(const py::handle& dout_obj, const py::handle& ids_obj, int64_t vocab_size) {
    require(vocab_size > 0, "vocab_size must be positive, got " + std::to_string(vocab_size));
    const IdArray ids = id_input(ids_obj, "ids", vocab_size);
    require(ids.ndim() >= 1 && ids.size() > 0, "ids must be a non-empty array");
    const FloatArray dout = float_input(dout_obj, "dout", ids.ndim() + 1);
    Shape expected = shape_of(ids);
    const int64_t E = dout.shape(ids.ndim());
    expected.push_back(E);
    require_shape(dout, "dout", expected);
    py::array_t<float> dweight({vocab_size, E});
    {
        KernelScope scope;
        kernels().embedding_backward(dout.data(), E, ids.data(), ids.size(), vocab_size, dweight.mutable_data());
    }
    return dweight;
}

// ------------------------------------------------------------------ LSTM layer

struct LstmArgs {
    LstmShape shape;
    FloatArray x, w_ih, w_hh, h0, c0;
};

LstmArgs lstm_args(const py::handle& x_obj, const py::handle& w_ih_obj, const py::handle& w_hh_obj,
                   const py::handle& h0_obj, const py::handle& c0_obj) {
    LstmArgs a{{}, float_input(x_obj, "x", 3), float_input(w_ih_obj, "w_ih", 2), float_input(w_hh_obj, "w_hh", 2),
               float_input(h0_obj, "h0", 2), float_input(c0_obj, "c0", 2)};
    const int64_t B = a.x.shape(0), T = a.x.shape(1), I = a.x.shape(2), H = a.w_hh.shape(1);
    require_nonempty(B, T);
    require(H > 0 && I > 0, "hidden and input sizes must be positive");
    require_shape(a.w_hh, "w_hh", {4 * H, H});
    require_shape(a.w_ih, "w_ih", {4 * H, I});
    require_shape(a.h0, "h0", {B, H});
    require_shape(a.c0, "c0", {B, H});
    a.shape = {B, T, I, H};
    return a;
}

py::tuple py_lstm_forward(const py::handle& x, const py::handle& w_ih, const py::handle& w_hh,
                          const py::handle& b_ih_obj, const py::handle& b_hh_obj, const py::handle& h0,
                          const py::handle& c0) {
    const LstmArgs a = lstm_args(x, w_ih, w_hh, h0, c0);
    const auto [B, T, I, H] = a.shape;
    const FloatArray b_ih = float_input(b_ih_obj, "b_ih", 1), b_hh = float_input(b_hh_obj, "b_hh", 1);
    require_shape(b_ih, "b_ih", {4 * H});
    require_shape(b_hh, "b_hh", {4 * H});
    py::array_t<float> hs = cache_aligned_floats({B, T, H}), cs = cache_aligned_floats({B, T, H}),
                       gates = cache_aligned_floats({B, T, 4 * H});
    {
        KernelScope scope;
        kernels().lstm_forward(a.shape, a.x.data(), a.w_ih.data(), a.w_hh.data(), b_ih.data(), b_hh.data(), a.h0.data(),
                               a.c0.data(), hs.mutable_data(), cs.mutable_data(), gates.mutable_data());
    }
    return py::make_tuple(hs, cs, gates);
}

py::tuple py_lstm_backward(const py::handle& dhs_obj, const py::handle& dh_n_obj, const py::handle& dc_n_obj,
                           const py::handle& x, const py::handle& w_ih, const py::handle& w_hh,
                           const py::handle& h0, const py::handle& c0, const py::handle& hs_obj,
                           const py::handle& cs_obj, const py::handle& gates_obj) {
    const LstmArgs a = lstm_args(x, w_ih, w_hh, h0, c0);
    const auto [B, T, I, H] = a.shape;
    const FloatArray dhs = float_input(dhs_obj, "dhs", 3), hs = float_input(hs_obj, "hs", 3),
                     cs = float_input(cs_obj, "cs", 3), gates = float_input(gates_obj, "gates", 3);
    require_shape(dhs, "dhs", {B, T, H});
    require_shape(hs, "hs", {B, T, H});
    require_shape(cs, "cs", {B, T, H});
    require_shape(gates, "gates", {B, T, 4 * H});
    FloatArray dh_n, dc_n;
    if (!dh_n_obj.is_none()) {
        dh_n = float_input(dh_n_obj, "dh_n", 2);
        require_shape(dh_n, "dh_n", {B, H});
    }
    if (!dc_n_obj.is_none()) {
        dc_n = float_input(dc_n_obj, "dc_n", 2);
        require_shape(dc_n, "dc_n", {B, H});
    }
    // dh0 doubles as the running dh_{t-1}, written each step by every thread (its rows or its columns).
    py::array_t<float> dx({B, T, I}), dw_ih({4 * H, I}), dw_hh({4 * H, H}), db({4 * H}),
        dh0 = cache_aligned_floats({B, H}), dc0({B, H});
    {
        KernelScope scope;
        kernels().lstm_backward(a.shape, dhs.data(), dh_n_obj.is_none() ? nullptr : dh_n.data(),
                                dc_n_obj.is_none() ? nullptr : dc_n.data(), a.x.data(), a.w_ih.data(), a.w_hh.data(),
                                a.h0.data(), a.c0.data(), hs.data(), cs.data(), gates.data(), dx.mutable_data(),
                                dw_ih.mutable_data(), dw_hh.mutable_data(), db.mutable_data(), dh0.mutable_data(),
                                dc0.mutable_data());
    }
    return py::make_tuple(dx, dw_ih, dw_hh, db, dh0, dc0);
}

// ------------------------------------------------------------------ output layer + cross-entropy

struct OutputArgs {
    OutputShape shape;
    FloatArray h, weight, bias;
    IdArray targets;
};

OutputArgs output_args(const py::handle& h_obj, const py::handle& weight_obj, const py::handle& bias_obj,
                       const py::handle& targets_obj) {
    OutputArgs a{{}, float_input(h_obj, "h", 2), float_input(weight_obj, "weight", 2),
                 float_input(bias_obj, "bias", 1), {}};
    const int64_t N = a.h.shape(0), H = a.h.shape(1), V = a.weight.shape(0);
    require(N > 0, "h has no rows");
    require(V > 0, "weight has no rows (empty vocabulary)");
    require_shape(a.weight, "weight", {V, H});
    require_shape(a.bias, "bias", {V});
    a.targets = id_input(targets_obj, "targets", V);
    require_shape(a.targets, "targets", {N});
    a.shape = {N, H, V};
    return a;
}

py::tuple py_output_loss_forward(const py::handle& h, const py::handle& weight, const py::handle& bias,
                                 const py::handle& targets) {
    const OutputArgs a = output_args(h, weight, bias, targets);
    py::array_t<float> lse({a.shape.rows});
    py::array_t<int32_t> predictions({a.shape.rows});
    double loss;
    {
        KernelScope scope;
        loss = kernels().output_loss_forward(a.shape, a.h.data(), a.weight.data(), a.bias.data(), a.targets.data(),
                                             lse.mutable_data(), predictions.mutable_data());
    }
    return py::make_tuple(loss, lse, predictions);
}

py::tuple py_output_loss_backward(const py::handle& h, const py::handle& weight, const py::handle& bias,
                                  const py::handle& targets, const py::handle& lse_obj) {
    const OutputArgs a = output_args(h, weight, bias, targets);
    const FloatArray lse = float_input(lse_obj, "lse", 1);
    require_shape(lse, "lse", {a.shape.rows});
    py::array_t<float> dh({a.shape.rows, a.shape.hidden}), dweight({a.shape.vocab, a.shape.hidden}),
        dbias({a.shape.vocab});
    {
        KernelScope scope;
        kernels().output_loss_backward(a.shape, a.h.data(), a.weight.data(), a.bias.data(), a.targets.data(),
                                       lse.data(), dh.mutable_data(), dweight.mutable_data(), dbias.mutable_data());
    }
    return py::make_tuple(dh, dweight, dbias);
}

py::tuple py_output_loss_forward_backward(const py::handle& h, const py::handle& weight, const py::handle& bias,
                                          const py::handle& targets) {
    const OutputArgs a = output_args(h, weight, bias, targets);
    py::array_t<float> dh({a.shape.rows, a.shape.hidden}), dweight({a.shape.vocab, a.shape.hidden}),
        dbias({a.shape.vocab});
    double loss;
    {
        KernelScope scope;
        loss = kernels().output_loss_forward_backward(a.shape, a.h.data(), a.weight.data(), a.bias.data(),
                                                      a.targets.data(), dh.mutable_data(), dweight.mutable_data(),
                                                      dbias.mutable_data());
    }
    return py::make_tuple(loss, dh, dweight, dbias);
}

// ------------------------------------------------------------------ adaptive softmax

struct AdaptiveArgs {
    AdaptiveShape shape;
    FloatArray h, head, head_bias;
    bool has_bias = false;  // head_bias was given (not None)
    std::vector<FloatArray> projections, outputs;
    AdaptiveWeights weights() const {
        AdaptiveWeights w{head.data(), has_bias ? head_bias.data() : nullptr, {}, {}};
        for (size_t i = 0; i < projections.size(); ++i) {
            w.projection.push_back(projections[i].data());
            w.out.push_back(outputs[i].data());
        }
        return w;
    }
};

// h (N, H), head_weight (c1 + n, H), head_bias (c1 + n) or None, and n clusters' tails:
// proj_weights[i] (d_i, H), out_weights[i] (size_i, d_i), every size positive.
// The decoder's weights alone (h is left empty), for hidden size H.
AdaptiveArgs adaptive_decoder_args(int64_t H, const py::handle& head_obj, const py::handle& bias_obj,
                                   const py::handle& proj_obj, const py::handle& out_obj) {
    AdaptiveArgs a{{}, {}, float_input(head_obj, "head_weight", 2), {}, !bias_obj.is_none(), {}, {}};
    const int64_t N = 0, Vh = a.head.shape(0);
    if (!py::isinstance<py::sequence>(proj_obj) || !py::isinstance<py::sequence>(out_obj))
        throw py::type_error("proj_weights and out_weights must be sequences of arrays, one per cluster");
    const py::sequence projs(py::reinterpret_borrow<py::object>(proj_obj)),
        outs(py::reinterpret_borrow<py::object>(out_obj));
    const int64_t n = int64_t(projs.size());
    require(n >= 1, "an adaptive softmax needs at least one cluster (proj_weights is empty)");
    require(int64_t(outs.size()) == n, "proj_weights has " + std::to_string(n) + " clusters but out_weights " +
                                           std::to_string(outs.size()));
    require(Vh > n, "head_weight has " + std::to_string(Vh) + " rows: it needs the shortlist (>= 1 word) and " +
                        std::to_string(n) + " cluster rows");
    require_shape(a.head, "head_weight", {Vh, H});
    if (a.has_bias) {
        a.head_bias = float_input(bias_obj, "head_bias", 1);
        require_shape(a.head_bias, "head_bias", {Vh});
    }
    a.shape = {N, H, Vh - n, {}, {}};
    for (int64_t i = 0; i < n; ++i) {
        const std::string pname = "proj_weights[" + std::to_string(i) + "]";
        const std::string oname = "out_weights[" + std::to_string(i) + "]";
        a.projections.push_back(float_input(projs[i], pname.c_str(), 2));
        a.outputs.push_back(float_input(outs[i], oname.c_str(), 2));
        const int64_t d = a.projections.back().shape(0), m = a.outputs.back().shape(0);
        require(d > 0, pname + " has no rows (a tail projection of width 0)");
        require(m > 0, oname + " has no rows (an empty cluster)");
        require_shape(a.projections.back(), pname.c_str(), {d, H});
        require_shape(a.outputs.back(), oname.c_str(), {m, d});
        a.shape.widths.push_back(d);
        a.shape.sizes.push_back(m);
    }
    return a;
}

AdaptiveArgs adaptive_args(const py::handle& h_obj, const py::handle& head_obj, const py::handle& bias_obj,
                           const py::handle& proj_obj, const py::handle& out_obj) {
    FloatArray h = float_input(h_obj, "h", 2);
    require(h.shape(0) > 0, "h has no rows");
    require(h.shape(1) > 0, "h has no columns (hidden size 0)");
    AdaptiveArgs a = adaptive_decoder_args(h.shape(1), head_obj, bias_obj, proj_obj, out_obj);
    a.h = h;
    a.shape.rows = h.shape(0);
    return a;
}

IdArray adaptive_targets(const AdaptiveArgs& a, const py::handle& targets_obj) {
    IdArray targets = id_input(targets_obj, "targets", a.shape.vocab());
    require_shape(targets, "targets", {a.shape.rows});
    return targets;
}

py::tuple py_adaptive_loss_forward(const py::handle& h, const py::handle& head_weight, const py::handle& head_bias,
                                   const py::handle& proj_weights, const py::handle& out_weights,
                                   const py::handle& targets_obj) {
    const AdaptiveArgs a = adaptive_args(h, head_weight, head_bias, proj_weights, out_weights);
    const IdArray targets = adaptive_targets(a, targets_obj);
    py::array_t<float> log_prob({a.shape.rows});
    py::array_t<int32_t> predictions({a.shape.rows});
    double loss;
    {
        KernelScope scope;
        loss = kernels().adaptive_loss_forward(a.shape, a.h.data(), a.weights(), targets.data(), log_prob.mutable_data(),
                                     predictions.mutable_data());
    }
    return py::make_tuple(loss, log_prob, predictions);
}

py::tuple py_adaptive_loss_forward_backward(const py::handle& h, const py::handle& head_weight,
                                            const py::handle& head_bias, const py::handle& proj_weights,
                                            const py::handle& out_weights, const py::handle& targets_obj) {
    const AdaptiveArgs a = adaptive_args(h, head_weight, head_bias, proj_weights, out_weights);
    const IdArray targets = adaptive_targets(a, targets_obj);
    const AdaptiveShape& s = a.shape;
    py::array_t<float> dh({s.rows, s.hidden}), dhead({s.head_size(), s.hidden});
    py::object dbias = py::none();
    AdaptiveGradients g{dhead.mutable_data(), nullptr, {}, {}};
    if (a.has_bias) {
        py::array_t<float> db({s.head_size()});
        g.head_bias = db.mutable_data();
        dbias = db;
    }
    py::list dprojs, douts;
    for (int64_t i = 0; i < s.clusters(); ++i) {
        py::array_t<float> dp({s.widths[i], s.hidden}), dout({s.sizes[i], s.widths[i]});
        g.projection.push_back(dp.mutable_data());
        g.out.push_back(dout.mutable_data());
        dprojs.append(dp);
        douts.append(dout);
    }
    double loss;
    {
        KernelScope scope;
        loss = kernels().adaptive_loss_forward_backward(s, a.h.data(), a.weights(), targets.data(), dh.mutable_data(), g);
    }
    return py::make_tuple(loss, dh, dhead, dbias, dprojs, douts);
}

py::array_t<float> py_adaptive_log_prob(const py::handle& h, const py::handle& head_weight,
                                        const py::handle& head_bias, const py::handle& proj_weights,
                                        const py::handle& out_weights) {
    const AdaptiveArgs a = adaptive_args(h, head_weight, head_bias, proj_weights, out_weights);
    py::array_t<float> out({a.shape.rows, a.shape.vocab()});
    {
        KernelScope scope;
        kernels().adaptive_log_prob(a.shape, a.h.data(), a.weights(), out.mutable_data());
    }
    return out;
}

// ------------------------------------------------------------------ optimizer

// x as Python prints a float (repr), for messages: 0.9, -0.5, nan, inf.
std::string float_str(double x) { return py::repr(py::float_(x)).cast<std::string>(); }

// A hyperparameter that must be a finite number >= 0 (ValueError naming it and its value).
void require_finite_non_negative(double x, const char* name) {
    require(x >= 0.0 && std::isfinite(x), std::string(name) + " must be a finite number >= 0, got " + float_str(x));
}

// An optimizer step's gradient must be finite: checked before anything is written, so that a
// NaN or infinity leaves the parameter and its state as they were. Inside a KernelScope.
void require_finite_grad(const FloatArray& grad) {
    if (!kernels().all_finite(grad.data(), grad.size()))
        throw std::invalid_argument("grad holds NaN or infinity; the parameter was left unchanged");
}

// torch.optim.Adam's settings for step, checked at the boundary.
AdamConfig adam_config(int64_t step, double lr, double beta1, double beta2, double eps, double weight_decay) {
    require(step >= 1, "step counts from 1, got " + std::to_string(step));
    require_finite_non_negative(lr, "lr");
    require(beta1 >= 0.0 && beta1 < 1.0 && beta2 >= 0.0 && beta2 < 1.0,
            "betas must lie in [0, 1), got beta1 = " + float_str(beta1) + ", beta2 = " + float_str(beta2));
    require_finite_non_negative(eps, "eps");
    require_finite_non_negative(weight_decay, "weight_decay");
    return {lr, beta1, beta2, eps, weight_decay};
}

// torch.optim.SGD's settings for step, checked at the boundary.
SgdConfig sgd_config(int64_t step, double lr, double momentum, double weight_decay, bool nesterov) {
    require(step >= 1, "step counts from 1, got " + std::to_string(step));
    require_finite_non_negative(lr, "lr");
    require_finite_non_negative(momentum, "momentum");
    require_finite_non_negative(weight_decay, "weight_decay");
    require(!nesterov || momentum > 0.0, "nesterov needs momentum > 0");
    return {lr, momentum, weight_decay, nesterov};
}

// buf, the momentum buffer of an SGD step on param: with momentum, a writeable float32 array
// of param's shape; without, not read (an empty array is returned).
py::array_t<float> momentum_buffer(const py::handle& buf_obj, const py::array_t<float>& param, double momentum) {
    if (momentum == 0.0) return py::array_t<float>();
    require(!buf_obj.is_none(), "momentum > 0 needs buf, the momentum buffer");
    auto buf = inplace_float(buf_obj, "buf");
    require_shape(buf, "buf", shape_of(param));
    return buf;
}

// rows (1-D, strictly increasing ids below limit) of a gradient in row form whose values are (count, E).
IdArray gradient_rows(const py::handle& rows_obj, int64_t limit) {
    const IdArray rows = id_input(rows_obj, "rows", limit);
    require(rows.ndim() == 1, "rows must be 1-D, got shape " + shape_str(shape_of(rows)));
    for (int64_t k = 1; k < int64_t(rows.size()); ++k)
        require(rows.data()[k] > rows.data()[k - 1], "rows must be strictly increasing (distinct ids, sorted), but rows[" +
                                                         std::to_string(k) + "] = " + std::to_string(rows.data()[k]) +
                                                         " follows " + std::to_string(rows.data()[k - 1]));
    return rows;
}

// A gradient in row form of param (V, E): rows (gradient_rows) and grad (len(rows), E), their values.
struct RowGradient {
    IdArray rows;
    FloatArray grad;
};

RowGradient row_gradient(const py::array_t<float>& param, const py::handle& rows_obj, const py::handle& grad_obj) {
    require(param.ndim() == 2, "param must be 2-D (V, E), got shape " + shape_str(shape_of(param)));
    const int64_t V = param.shape(0), E = param.shape(1);
    require(V > 0 && E > 0, "param must have rows and columns, got shape " + shape_str(shape_of(param)));
    IdArray rows = gradient_rows(rows_obj, V);
    FloatArray grad = float_input(grad_obj, "grad", 2);
    require_shape(grad, "grad", {int64_t(rows.size()), E});
    return {rows, grad};
}

void py_adam_update(const py::handle& param_obj, const py::handle& grad_obj, const py::handle& m_obj,
                    const py::handle& v_obj, int64_t step, double lr, double beta1, double beta2, double eps,
                    double weight_decay) {
    auto param = inplace_float(param_obj, "param");
    auto m = inplace_float(m_obj, "m");
    auto v = inplace_float(v_obj, "v");
    const FloatArray grad = float_input(grad_obj, "grad", param.ndim());
    require_shape(grad, "grad", shape_of(param));
    require_shape(m, "m", shape_of(param));
    require_shape(v, "v", shape_of(param));
    const AdamConfig config = adam_config(step, lr, beta1, beta2, eps, weight_decay);
    KernelScope scope;
    require_finite_grad(grad);
    kernels().adam_update(param.mutable_data(), grad.data(), m.mutable_data(), v.mutable_data(), param.size(), step,
                          config);
}

void py_adam_update_rows(const py::handle& param_obj, const py::handle& rows_obj, const py::handle& grad_obj,
                         const py::handle& m_obj, const py::handle& v_obj, int64_t step, double lr, double beta1,
                         double beta2, double eps, double weight_decay) {
    auto param = inplace_float(param_obj, "param");
    auto m = inplace_float(m_obj, "m");
    auto v = inplace_float(v_obj, "v");
    const auto [rows, grad] = row_gradient(param, rows_obj, grad_obj);
    require_shape(m, "m", shape_of(param));
    require_shape(v, "v", shape_of(param));
    const AdamConfig config = adam_config(step, lr, beta1, beta2, eps, weight_decay);
    KernelScope scope;
    require_finite_grad(grad);
    kernels().adam_update_rows(param.mutable_data(), param.shape(1), param.shape(0), rows.data(), grad.data(),
                               rows.size(), m.mutable_data(), v.mutable_data(), step, config);
}

py::tuple py_embedding_backward_sparse(const py::handle& dout_obj, const py::handle& ids_obj) {
    const IdArray ids = id_input(ids_obj, "ids", int64_t(INT32_MAX) + 1);
    require(ids.ndim() >= 1 && ids.size() > 0, "ids must be a non-empty array");
    const FloatArray dout = float_input(dout_obj, "dout", ids.ndim() + 1);
    Shape expected = shape_of(ids);
    const int64_t E = dout.shape(ids.ndim()), n = ids.size();
    expected.push_back(E);
    require_shape(dout, "dout", expected);
    std::vector<int32_t> rows(n);
    std::vector<float> grad(n * E);
    int64_t count;
    {
        KernelScope scope;
        count = kernels().embedding_backward_sparse(dout.data(), E, ids.data(), n, rows.data(), grad.data());
    }
    py::array_t<int32_t> rows_out({count});
    py::array_t<float> grad_out({count, E});
    std::copy(rows.begin(), rows.begin() + count, rows_out.mutable_data());
    std::copy(grad.begin(), grad.begin() + count * E, grad_out.mutable_data());
    return py::make_tuple(rows_out, grad_out);
}

void py_sparse_adam_update(const py::handle& param_obj, const py::handle& rows_obj, const py::handle& grad_obj,
                           const py::handle& m_obj, const py::handle& v_obj, const py::handle& slots_obj, int64_t step,
                           double lr, double beta1, double beta2, double eps) {
    auto param = inplace_float(param_obj, "param");
    auto m = inplace_float(m_obj, "m");
    auto v = inplace_float(v_obj, "v");
    require(param.ndim() == 2, "param must be 2-D (V, E), got shape " + shape_str(shape_of(param)));
    const int64_t V = param.shape(0), E = param.shape(1);
    require(m.ndim() == 2 && m.shape(1) == E, "m must be (slots, " + std::to_string(E) + "), got shape " +
                                                  shape_str(shape_of(m)));
    require_shape(v, "v", shape_of(m));
    const IdArray rows = gradient_rows(rows_obj, V);
    const int64_t count = rows.size();
    const IdArray slots = id_input(slots_obj, "slots", m.shape(0));
    require_shape(slots, "slots", {count});
    const FloatArray grad = float_input(grad_obj, "grad", 2);
    require_shape(grad, "grad", {count, E});
    std::vector<char> used(m.shape(0), 0);
    for (int64_t k = 0; k < count; ++k) {
        require(!used[slots.data()[k]], "slots must be distinct: slot " + std::to_string(slots.data()[k]) + " repeats");
        used[slots.data()[k]] = 1;
    }
    const AdamConfig config = adam_config(step, lr, beta1, beta2, eps, 0.0);
    KernelScope scope;
    require_finite_grad(grad);
    kernels().sparse_adam_update(param.mutable_data(), E, rows.data(), grad.data(), count, m.mutable_data(), v.mutable_data(),
                       slots.data(), step, config);
}

void py_sparse_sgd_update(const py::handle& param_obj, const py::handle& rows_obj, const py::handle& grad_obj,
                          double lr) {
    auto param = inplace_float(param_obj, "param");
    require(param.ndim() == 2, "param must be 2-D (V, E), got shape " + shape_str(shape_of(param)));
    const int64_t V = param.shape(0), E = param.shape(1);
    const IdArray rows = gradient_rows(rows_obj, V);  // distinct rows: one writer each, as after coalescing
    const int64_t count = rows.size();
    const FloatArray grad = float_input(grad_obj, "grad", 2);
    require_shape(grad, "grad", {count, E});
    require_finite_non_negative(lr, "lr");
    KernelScope scope;
    require_finite_grad(grad);
    kernels().sparse_sgd_update(param.mutable_data(), E, rows.data(), grad.data(), count, lr);
}

void py_sgd_update(const py::handle& param_obj, const py::handle& grad_obj, const py::handle& buf_obj, int64_t step,
                   double lr, double momentum, double weight_decay, bool nesterov) {
    auto param = inplace_float(param_obj, "param");
    const FloatArray grad = float_input(grad_obj, "grad", param.ndim());
    require_shape(grad, "grad", shape_of(param));
    const SgdConfig config = sgd_config(step, lr, momentum, weight_decay, nesterov);
    auto buf = momentum_buffer(buf_obj, param, momentum);
    KernelScope scope;
    require_finite_grad(grad);
    kernels().sgd_update(param.mutable_data(), grad.data(), momentum > 0.0 ? buf.mutable_data() : nullptr,
                         param.size(), step, config);
}

void py_sgd_update_rows(const py::handle& param_obj, const py::handle& rows_obj, const py::handle& grad_obj,
                        const py::handle& buf_obj, int64_t step, double lr, double momentum, double weight_decay,
                        bool nesterov, bool skip_absent_rows) {
    auto param = inplace_float(param_obj, "param");
    const auto [rows, grad] = row_gradient(param, rows_obj, grad_obj);
    const SgdConfig config = sgd_config(step, lr, momentum, weight_decay, nesterov);
    auto buf = momentum_buffer(buf_obj, param, momentum);
    KernelScope scope;
    require_finite_grad(grad);
    kernels().sgd_update_rows(param.mutable_data(), param.shape(1), param.shape(0), rows.data(), grad.data(),
                              rows.size(), momentum > 0.0 ? buf.mutable_data() : nullptr, step, config,
                              skip_absent_rows);
}

// A sequence argument of clipped_sgd_update (TypeError naming it otherwise).
py::sequence sequence_arg(const py::handle& obj, const char* name) {
    if (py::isinstance<py::array>(obj) || !py::isinstance<py::sequence>(obj))
        throw py::type_error(std::string(name) + " must be a sequence of arrays, one per parameter, got " +
                             py::str(py::type::handle_of(obj)).cast<std::string>());
    return py::reinterpret_borrow<py::sequence>(obj);
}

double py_clipped_sgd_update(const py::handle& params_obj, const py::handle& grads_obj, const py::handle& bufs_obj,
                             int64_t step, double lr, double max_norm, double momentum, double weight_decay,
                             bool nesterov, bool skip_absent_rows) {
    const py::sequence params_seq = sequence_arg(params_obj, "params"), grads_seq = sequence_arg(grads_obj, "grads");
    const size_t count = params_seq.size();
    require(grads_seq.size() == count, "grads has " + std::to_string(grads_seq.size()) + " arrays but params " +
                                           std::to_string(count));
    const SgdConfig config = sgd_config(step, lr, momentum, weight_decay, nesterov);
    require(max_norm > 0.0, "max_norm must be positive");
    py::sequence bufs_seq;
    if (momentum > 0.0) {
        require(!bufs_obj.is_none(), "momentum > 0 needs bufs, the momentum buffers");
        bufs_seq = sequence_arg(bufs_obj, "bufs");
        require(bufs_seq.size() == count, "bufs has " + std::to_string(bufs_seq.size()) + " arrays but params " +
                                              std::to_string(count));
    }
    std::vector<py::array_t<float>> keep_params, keep_bufs;
    std::vector<FloatArray> keep_grads;
    std::vector<IdArray> keep_rows;
    std::vector<SgdSpan> spans;
    for (size_t i = 0; i < count; ++i) {
        const std::string index = "[" + std::to_string(i) + "]";
        keep_params.push_back(inplace_float(params_seq[i], ("params" + index).c_str()));
        const py::array_t<float>& param = keep_params.back();
        const py::handle grad = grads_seq[i];
        SgdSpan span{keep_params.back().mutable_data(), nullptr, nullptr, int64_t(param.size())};
        if (py::isinstance<py::tuple>(grad)) {  // row form: (rows, values) of a (V, E) gradient
            const py::tuple row_form = py::reinterpret_borrow<py::tuple>(grad);
            const std::string name = "grads" + index;
            require(row_form.size() == 2, name + " must be an array or a tuple (rows, values), got a tuple of " +
                                              std::to_string(row_form.size()));
            require(param.ndim() == 2 && param.shape(0) > 0 && param.shape(1) > 0,
                    "params" + index + " must be 2-D (V, E) with V, E > 0 for a gradient in row form, got shape " +
                        shape_str(shape_of(param)));
            keep_rows.push_back(gradient_rows(row_form[0], param.shape(0)));
            keep_grads.push_back(float_input(row_form[1], (name + "'s values").c_str(), 2));
            require_shape(keep_grads.back(), (name + "'s values").c_str(),
                          {int64_t(keep_rows.back().size()), int64_t(param.shape(1))});
            span.rows = keep_rows.back().data();
            span.count = keep_rows.back().size();
            span.dim = param.shape(1);
            span.skip_absent_rows = skip_absent_rows;
        } else {
            keep_grads.push_back(float_input(grad, ("grads" + index).c_str(), param.ndim()));
            require_shape(keep_grads.back(), ("grads" + index).c_str(), shape_of(param));
        }
        span.grad = keep_grads.back().data();
        if (momentum > 0.0) {
            keep_bufs.push_back(inplace_float(bufs_seq[i], ("bufs" + index).c_str()));
            require_shape(keep_bufs.back(), ("bufs" + index).c_str(), shape_of(param));
            span.buf = keep_bufs.back().mutable_data();
        }
        spans.push_back(span);
    }
    KernelScope scope;
    return kernels().clipped_sgd_update(spans, step, max_norm, config);
}

double py_clip_grad_norm(const py::object& grads_arg, double max_norm) {
    require(max_norm > 0.0, "max_norm must be positive");
    // One array or a sequence of them, as torch.nn.utils.clip_grad_norm_ takes.
    const py::sequence grads_obj = py::isinstance<py::array>(grads_arg) ? py::sequence(py::make_tuple(grads_arg))
                                                                         : py::sequence(grads_arg);
    std::vector<py::array_t<float>> keep;
    std::vector<std::pair<float*, int64_t>> arrays;
    for (size_t i = 0; i < grads_obj.size(); ++i) {
        const std::string name = "grads[" + std::to_string(i) + "]";
        keep.push_back(inplace_float(grads_obj[i], name.c_str()));
        arrays.emplace_back(keep.back().mutable_data(), keep.back().size());
    }
    KernelScope scope;
    return kernels().clip_grad_norm(arrays, max_norm);
}

int64_t positive_int(const py::handle& obj, const char* name);  // below, with the data functions

double py_clip_grad_norm_rows(const py::handle& grads_obj, double max_norm) {
    require(max_norm > 0.0, "max_norm must be positive");
    const py::sequence grads_seq = sequence_arg(grads_obj, "grads");
    std::vector<py::array_t<float>> keep;
    std::vector<IdArray> keep_rows;
    std::vector<GradientSpan> spans;
    for (size_t i = 0; i < grads_seq.size(); ++i) {
        const std::string name = "grads[" + std::to_string(i) + "]";
        const py::handle entry = grads_seq[i];
        if (!py::isinstance<py::tuple>(entry)) {
            keep.push_back(inplace_float(entry, name.c_str()));
            spans.push_back({keep.back().mutable_data(), int64_t(keep.back().size()), nullptr, 0, 0});
            continue;
        }
        const py::tuple row_form = py::reinterpret_borrow<py::tuple>(entry);
        require(row_form.size() == 3, name + " must be an array or a tuple (rows, values, vocab_size), got a tuple of " +
                                          std::to_string(row_form.size()));
        const int64_t vocab = positive_int(row_form[2], (name + "'s vocab_size").c_str());
        require(vocab <= int64_t(INT32_MAX) + 1, name + "'s vocab_size must be at most 2**31 (ids are int32), got " +
                                                     std::to_string(vocab));
        keep.push_back(inplace_float(row_form[1], (name + "'s values").c_str()));
        const py::array_t<float>& values = keep.back();
        require(values.ndim() == 2 && values.shape(1) > 0, name + "'s values must be 2-D (rows, E) with E > 0, got shape " +
                                                                shape_str(shape_of(values)));
        keep_rows.push_back(gradient_rows(row_form[0], vocab));
        const int64_t count = keep_rows.back().size(), E = values.shape(1);
        require(values.shape(0) == count, name + "'s values must have one row per id of rows (" + std::to_string(count) +
                                              "), got shape " + shape_str(shape_of(values)));
        spans.push_back({keep.back().mutable_data(), vocab * E, keep_rows.back().data(), count, E});
    }
    KernelScope scope;
    return kernels().clip_grad_norm_rows(spans, max_norm);
}

// ------------------------------------------------------------------ data

// A positive Python integer of any size as int64 (ValueError beyond it, not pybind11's
// "incompatible function arguments"); TypeError for anything but an integer.
int64_t positive_int(const py::handle& obj, const char* name) {
    if (PyBool_Check(obj.ptr()) || !PyIndex_Check(obj.ptr()))
        throw py::type_error(std::string(name) + " must be an int, got " +
                             std::string(py::str(py::type::of(obj).attr("__name__"))));
    const py::int_ value = py::reinterpret_steal<py::int_>(PyNumber_Index(obj.ptr()));
    if (!value) throw py::error_already_set();
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(value.ptr(), &overflow);
    require(overflow <= 0, std::string(name) + " must be below 2**63, got " + std::string(py::str(value)));
    require(!overflow && v > 0, std::string(name) + " must be positive, got " + std::string(py::str(value)));
    return v;
}

// Outputs larger than the machine's memory are a ValueError up front: the allocation
// might succeed (overcommit) and the process be killed while filling it.
void require_fits_in_memory(double bytes, const std::string& what) {
    const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGE_SIZE);
    if (pages <= 0 || page_size <= 0) return;
    const double memory = double(pages) * double(page_size);
    if (bytes > memory) {
        std::ostringstream out;
        out.precision(3);
        out << what << " would take " << bytes / double(1 << 30) << " GiB, more than this machine's memory ("
            << memory / double(1 << 30) << " GiB)";
        throw py::value_error(out.str());
    }
}

// "a window needs seq_len + 1 = N tokens", without computing seq_len + 1 in int64.
std::string window_needs(int64_t seq_len) {
    return "a window needs seq_len + 1 = " + std::to_string(uint64_t(seq_len) + 1) + " tokens";
}

py::tuple py_windows(const py::handle& ids_obj, const py::handle& seq_len_obj, const py::handle& stride_obj) {
    const int64_t seq_len = positive_int(seq_len_obj, "seq_len"), stride = positive_int(stride_obj, "stride");
    const IdArray ids = id_input(ids_obj, "ids", int64_t(INT32_MAX) + 1);
    require(ids.ndim() == 1, "ids must be 1-D, got shape " + shape_str(shape_of(ids)));
    const int64_t count = window_count(ids.size(), seq_len, stride);
    require(count > 0, "ids holds " + std::to_string(ids.size()) + " tokens; " + window_needs(seq_len));
    require_fits_in_memory(2.0 * sizeof(int32_t) * double(count) * double(seq_len),
                           std::to_string(count) + " windows of seq_len=" + std::to_string(seq_len) +
                               " (x and y; a larger stride makes fewer)");
    py::array_t<int32_t> x({count, seq_len}), y({count, seq_len});
    {
        KernelScope scope;
        make_windows(ids.data(), seq_len, stride, count, x.mutable_data(), y.mutable_data());
    }
    return py::make_tuple(x, y);
}

// The corpus of lazy batching: a native int32 or uint16 C-contiguous array is read where it
// lies (a memory-mapped token file is never copied, nor scanned whole per batch: the ids of
// the gathered windows are range-checked by the kernels that take them); any other integer
// array is checked and converted once here.
template <typename Id>
py::tuple gather_from(const py::array& ids, const std::vector<int64_t>& starts, int64_t seq_len) {
    const auto typed = py::array_t<Id, py::array::c_style>::ensure(ids);
    const int64_t count = int64_t(starts.size());
    py::array_t<int32_t> x({count, seq_len}), y({count, seq_len});
    {
        KernelScope scope;
        gather_windows(typed.data(), starts.data(), count, seq_len, x.mutable_data(), y.mutable_data());
    }
    return py::make_tuple(x, y);
}

py::tuple py_gather_windows(const py::handle& ids_obj, const py::handle& starts_obj, const py::handle& seq_len_obj) {
    const int64_t seq_len = positive_int(seq_len_obj, "seq_len");
    py::array ids = as_array(ids_obj, "ids");
    require(ids.ndim() == 1, "ids must be 1-D, got shape " + shape_str(shape_of(ids)));
    require(int64_t(ids.size()) > seq_len, "ids holds " + std::to_string(ids.size()) + " tokens; " +
                                               window_needs(seq_len));
    const int64_t last_start = ids.size() - seq_len - 1;  // a window needs seq_len + 1 tokens
    const IdArray starts32 = id_input(starts_obj, "starts", last_start + 1);
    require(starts32.ndim() == 1 && starts32.size() > 0, "starts must be a non-empty 1-D array");
    std::vector<int64_t> starts(starts32.data(), starts32.data() + starts32.size());
    const bool contiguous = ids.flags() & py::array::c_style;
    if (contiguous && ids.dtype().equal(py::dtype::of<uint16_t>())) return gather_from<uint16_t>(ids, starts, seq_len);
    if (!(contiguous && ids.dtype().equal(py::dtype::of<int32_t>())))
        ids = id_input(ids, "ids", int64_t(INT32_MAX) + 1);
    return gather_from<int32_t>(ids, starts, seq_len);
}

// ------------------------------------------------------------------ generation

FloatArray param(const py::dict& params, const std::string& name, const Shape& shape) {
    if (!params.contains(name)) throw py::key_error("params is missing '" + name + "'");
    FloatArray a = float_input(params[name.c_str()], name.c_str(), py::ssize_t(shape.size()));
    require_shape(a, name.c_str(), shape);
    return a;
}

// A model's parameters (the state_dict) checked and viewed for the C++ loops; owns the
// arrays (converted ones included) for as long as the view is used.
struct ModelArgs {
    std::vector<FloatArray> keep;
    AdaptiveArgs adaptive;  // an adaptive softmax decoder's arrays, when the model has one
    LanguageModelView view;
};

ModelArgs model_args(const py::dict& params, int64_t num_layers) {
    require(num_layers >= 1, "num_layers must be >= 1");
    ModelArgs a;
    if (!params.contains("embedding.weight")) throw py::key_error("params is missing 'embedding.weight'");
    a.keep.push_back(float_input(params["embedding.weight"], "embedding.weight", 2));
    const int64_t V = a.keep[0].shape(0), E = a.keep[0].shape(1);
    if (!params.contains("lstm.weight_hh_l0")) throw py::key_error("params is missing 'lstm.weight_hh_l0'");
    const int64_t H = float_input(params["lstm.weight_hh_l0"], "lstm.weight_hh_l0", 2).shape(1);
    a.view = LanguageModelView{V, E, H, a.keep[0].data(), {}, nullptr, nullptr};
    for (int64_t k = 0; k < num_layers; ++k) {
        const std::string l = std::to_string(k);
        const int64_t width = k == 0 ? E : H;
        a.keep.push_back(param(params, "lstm.weight_ih_l" + l, {4 * H, width}));
        a.keep.push_back(param(params, "lstm.weight_hh_l" + l, {4 * H, H}));
        a.keep.push_back(param(params, "lstm.bias_ih_l" + l, {4 * H}));
        a.keep.push_back(param(params, "lstm.bias_hh_l" + l, {4 * H}));
        const size_t n = a.keep.size();
        a.view.layers.push_back(
            {a.keep[n - 4].data(), a.keep[n - 3].data(), a.keep[n - 2].data(), a.keep[n - 1].data(), width});
    }
    if (params.contains("decoder.head.weight")) {  // an adaptive softmax decoder
        py::list projs, outs;
        for (int64_t i = 0; params.contains("decoder.tail." + std::to_string(i) + ".0.weight"); ++i) {
            projs.append(params[("decoder.tail." + std::to_string(i) + ".0.weight").c_str()]);
            outs.append(params[("decoder.tail." + std::to_string(i) + ".1.weight").c_str()]);
        }
        const py::object bias = params.contains("decoder.head.bias") ? py::object(params["decoder.head.bias"])
                                                                     : py::object(py::none());
        a.adaptive = adaptive_decoder_args(H, params["decoder.head.weight"], bias, projs, outs);
        require(a.adaptive.shape.vocab() == V, "the adaptive decoder covers " +
                                                   std::to_string(a.adaptive.shape.vocab()) +
                                                   " words but embedding.weight has " + std::to_string(V) + " rows");
        a.view.adaptive_shape = a.adaptive.shape;
        a.view.adaptive = a.adaptive.weights();
    } else {
        a.keep.push_back(param(params, "decoder.weight", {V, H}));
        a.keep.push_back(param(params, "decoder.bias", {V}));
        a.view.decoder_w = a.keep[a.keep.size() - 2].data();
        a.view.decoder_b = a.keep.back().data();
    }
    return a;
}

SamplerConfig sampler_config(double temperature, int64_t top_k, double top_p, int64_t suppressed, int64_t vocab) {
    require(std::isfinite(temperature) && temperature >= 0.0, "temperature must be >= 0 (0 is greedy)");
    require(top_k >= 0, "top_k must be >= 0 (0 is off)");
    require(top_p > 0.0 && top_p <= 1.0, "top_p must lie in (0, 1]");
    require(suppressed >= -1 && suppressed < vocab,
            "suppressed must be a token id in [0, " + std::to_string(vocab) + ") or -1 (none), got " +
                std::to_string(suppressed));
    return {temperature, top_k, top_p, static_cast<int32_t>(suppressed)};
}

IdArray prompt_input(const py::handle& prompt_obj, int64_t vocab) {
    const IdArray prompt = id_input(prompt_obj, "prompt", vocab);
    require(prompt.ndim() == 2, "prompt must be 2-D (samples, length), got shape " + shape_str(shape_of(prompt)));
    require(prompt.shape(0) > 0, "prompt has no samples");
    require(prompt.shape(1) > 0, "prompt is empty: generation needs at least one token to start from");
    return prompt;
}

py::array_t<int32_t> py_generate(const py::dict& params, int64_t num_layers, const py::handle& prompt_obj,
                                 int64_t max_new_tokens, double temperature, int64_t top_k, double top_p,
                                 uint64_t seed, int64_t suppressed) {
    require(max_new_tokens >= 0, "max_new_tokens must be >= 0, got " + std::to_string(max_new_tokens));
    const ModelArgs model = model_args(params, num_layers);
    const SamplerConfig config = sampler_config(temperature, top_k, top_p, suppressed, model.view.vocab);
    const IdArray prompt = prompt_input(prompt_obj, model.view.vocab);
    const int64_t samples = prompt.shape(0), prompt_len = prompt.shape(1);
    py::array_t<int32_t> out({samples, max_new_tokens});
    try {
        KernelScope scope;
        kernels().generate(model.view, prompt.data(), samples, prompt_len, max_new_tokens, config, seed,
                           out.mutable_data(), python_signal_raised);
    } catch (const Interrupted&) {
        throw py::error_already_set();  // what the signal handler raised, KeyboardInterrupt for Ctrl-C
    }
    return out;
}

// How many threads a kernel called from this thread runs on: the test of set_num_threads.
int py_kernel_team_size() {
    KernelScope scope;
    return parallel_team_size();
}

// GenerationSession for Python: the weights it reads stay alive with it, and a lock keeps
// two threads from advancing the same session at once.
class PySession {
public:
    PySession(const py::dict& params, int64_t num_layers, const py::handle& prompt_obj, double temperature,
              int64_t top_k, double top_p, uint64_t seed, int64_t suppressed)
        : model_(model_args(params, num_layers)) {
        const SamplerConfig config = sampler_config(temperature, top_k, top_p, suppressed, model_.view.vocab);
        const IdArray prompt = prompt_input(prompt_obj, model_.view.vocab);
        try {
            KernelScope scope;
            session_ = kernels().generation_session(model_.view, prompt.data(), prompt.shape(0), prompt.shape(1),
                                                    config, seed, python_signal_raised);
        } catch (const Interrupted&) {
            throw py::error_already_set();
        }
    }

    py::array_t<int32_t> next(int64_t count) {
        require(count >= 0, "count must be >= 0, got " + std::to_string(count));
        py::array_t<int32_t> out({session_->samples(), count});
        try {
            KernelScope scope;
            std::lock_guard<std::mutex> lock(mutex_);
            session_->next(count, out.mutable_data(), count, python_signal_raised);
        } catch (const Interrupted&) {
            throw py::error_already_set();
        }
        return out;
    }

    py::array_t<float> probabilities() {
        py::array_t<float> out({session_->samples(), session_->vocab()});
        KernelScope scope;
        std::lock_guard<std::mutex> lock(mutex_);
        session_->probabilities(out.mutable_data());
        return out;
    }

private:
    ModelArgs model_;
    std::unique_ptr<GenerationSession> session_;
    std::mutex mutex_;
};

// ------------------------------------------------------------------ scoring

py::tuple py_score_sequences(const py::dict& params, int64_t num_layers, const py::handle& ids_obj,
                             const py::handle& offsets_obj, int64_t bos, int64_t batch_size) {
    const ModelArgs model = model_args(params, num_layers);
    const int64_t V = model.view.vocab;
    require(batch_size > 0, "batch_size must be positive, got " + std::to_string(batch_size));
    require(bos >= -1 && bos < V, "bos must be a token id in [0, " + std::to_string(V) + ") or -1 (none), got " +
                                      std::to_string(bos));
    py::array offsets_array = as_array(offsets_obj, "offsets");
    require(offsets_array.dtype().kind() == 'i' || offsets_array.dtype().kind() == 'u',
            "offsets must be an integer array");
    const auto offsets = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(offsets_array);
    require(offsets.ndim() == 1 && offsets.size() >= 1,
            "offsets must be 1-D with at least one entry (sequence i is ids[offsets[i]:offsets[i + 1]])");
    const IdArray ids = id_input(ids_obj, "ids", V);
    require(ids.ndim() == 1, "ids must be 1-D (the sequences one after another), got shape " +
                                 shape_str(shape_of(ids)));
    const int64_t count = offsets.size() - 1;
    const int64_t* off = offsets.data();
    require(off[0] == 0 && off[count] == int64_t(ids.size()),
            "offsets must start at 0 and end at len(ids) = " + std::to_string(ids.size()));
    int64_t total = 0;
    for (int64_t i = 0; i < count; ++i) {
        require(off[i + 1] >= off[i], "offsets must not decrease (sequence " + std::to_string(i) + ")");
        total += scored_count(off[i + 1] - off[i], int32_t(bos));
    }
    py::array_t<float> log_probs(total);
    py::array_t<int32_t> predictions(total), ranks(total);
    try {
        KernelScope scope;
        kernels().score_sequences(model.view, ids.data(), off, count, int32_t(bos), batch_size,
                                  {log_probs.mutable_data(), predictions.mutable_data(), ranks.mutable_data()},
                                  python_signal_raised);
    } catch (const Interrupted&) {
        throw py::error_already_set();  // what the signal handler raised, KeyboardInterrupt for Ctrl-C
    }
    return py::make_tuple(log_probs, predictions, ranks);
}

// The state of every layer for score_streams: (layers, batch, H) float32, zeros for None.
py::array_t<float> stream_state(const py::handle& obj, const char* name, const Shape& shape) {
    py::array_t<float> state(shape);
    if (obj.is_none()) {
        std::fill(state.mutable_data(), state.mutable_data() + state.size(), 0.0f);
        return state;
    }
    const FloatArray given = float_input(obj, name, 3);
    require_shape(given, name, shape);
    std::copy(given.data(), given.data() + given.size(), state.mutable_data());
    return state;
}

py::tuple py_score_streams(const py::dict& params, int64_t num_layers, const py::handle& x_obj,
                           const py::handle& y_obj, const py::handle& h0_obj, const py::handle& c0_obj) {
    const ModelArgs model = model_args(params, num_layers);
    const int64_t V = model.view.vocab, H = model.view.hidden;
    const IdArray x = id_input(x_obj, "x", V), y = id_input(y_obj, "y", V);
    require(x.ndim() == 2, "x must be 2-D (streams, steps), got shape " + shape_str(shape_of(x)));
    require_shape(y, "y", shape_of(x));
    const int64_t B = x.shape(0), T = x.shape(1);
    require_nonempty(B, T);
    py::array_t<float> h = stream_state(h0_obj, "h0", {num_layers, B, H});
    py::array_t<float> c = stream_state(c0_obj, "c0", {num_layers, B, H});
    py::array_t<float> log_probs({B, T});
    py::array_t<int32_t> predictions({B, T}), ranks({B, T});
    try {
        KernelScope scope;
        kernels().score_streams(model.view, x.data(), y.data(), B, T, h.mutable_data(), c.mutable_data(),
                                {log_probs.mutable_data(), predictions.mutable_data(), ranks.mutable_data()},
                                python_signal_raised);
    } catch (const Interrupted&) {
        throw py::error_already_set();
    }
    return py::make_tuple(log_probs, predictions, ranks, h, c);
}

py::tuple py_output_scores(const py::handle& h, const py::handle& weight, const py::handle& bias,
                           const py::handle& targets) {
    const OutputArgs a = output_args(h, weight, bias, targets);
    py::array_t<float> log_probs(a.shape.rows);
    py::array_t<int32_t> predictions(a.shape.rows), ranks(a.shape.rows);
    {
        KernelScope scope;
        kernels().output_scores(a.shape, a.h.data(), a.weight.data(), a.bias.data(), a.targets.data(),
                      {log_probs.mutable_data(), predictions.mutable_data(), ranks.mutable_data()});
    }
    return py::make_tuple(log_probs, predictions, ranks);
}

py::array_t<int64_t> py_prediction_counts(const py::handle& targets_obj, const py::handle& predictions_obj,
                                          int64_t vocab_size) {
    require(vocab_size > 0, "vocab_size must be positive, got " + std::to_string(vocab_size));
    const IdArray targets = id_input(targets_obj, "targets", vocab_size);
    const IdArray predictions = id_input(predictions_obj, "predictions", vocab_size);
    require(targets.ndim() == 1, "targets must be 1-D, got shape " + shape_str(shape_of(targets)));
    require_shape(predictions, "predictions", shape_of(targets));
    py::array_t<int64_t> counts({int64_t(3), vocab_size});
    std::fill(counts.mutable_data(), counts.mutable_data() + counts.size(), int64_t(0));
    {
        KernelScope scope;
        kernels().prediction_counts(targets.data(), predictions.data(), targets.size(), vocab_size,
                                    counts.mutable_data());
    }
    return counts;
}

double py_fma_peak_gflops(double seconds) {
    use_process_thread_count();
    py::gil_scoped_release release;
    return kernels().fma_peak_gflops(seconds);
}

py::dict build_info() {
    py::dict info;
    info["version"] = FASTLM_VERSION;
    info["isa"] = kernels().isa;
    info["isa_available"] = isa_available();
    info["simd"] = kernels().isa;  // the name earlier versions gave the set in use
    info["isa_build"] = FASTLM_ISA_BUILD;  // "portable": a copy per set; "native": one, for the building CPU
    info["openmp"] = has_openmp();
    info["threads"] = get_num_threads();
    info["malloc_tuned"] = malloc_tuned();
#if defined(__clang__)
    info["compiler"] = "clang " __clang_version__;
#elif defined(__GNUC__)
    info["compiler"] = "gcc " __VERSION__;
#else
    info["compiler"] = "unknown";
#endif
    return info;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "fastlm's C++ kernels; every function has a NumPy twin in fastlm.reference";
    kernels();  // the instruction set is chosen now: a bad FASTLM_ISA fails the import, naming the choices
    py::register_exception_translator([](std::exception_ptr error) {
        try {
            if (error) std::rethrow_exception(error);
        } catch (const NonFiniteError& e) {
            PyErr_SetString(PyExc_FloatingPointError, e.what());
        }
    });
    m.def("embedding_forward", &py_embedding_forward, py::arg("weight"), py::arg("ids"));
    m.def("embedding_backward", &py_embedding_backward, py::arg("dout"), py::arg("ids"), py::arg("vocab_size"));
    m.def("lstm_forward", &py_lstm_forward, py::arg("x"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"),
          py::arg("b_hh"), py::arg("h0"), py::arg("c0"));
    m.def("lstm_backward", &py_lstm_backward, py::arg("dhs"), py::arg("dh_n"), py::arg("dc_n"), py::arg("x"),
          py::arg("w_ih"), py::arg("w_hh"), py::arg("h0"), py::arg("c0"), py::arg("hs"), py::arg("cs"),
          py::arg("gates"));
    m.def("output_loss_forward", &py_output_loss_forward, py::arg("h"), py::arg("weight"), py::arg("bias"),
          py::arg("targets"));
    m.def("output_loss_backward", &py_output_loss_backward, py::arg("h"), py::arg("weight"), py::arg("bias"),
          py::arg("targets"), py::arg("lse"));
    m.def("output_loss_forward_backward", &py_output_loss_forward_backward, py::arg("h"), py::arg("weight"),
          py::arg("bias"), py::arg("targets"));
    m.def("adaptive_loss_forward", &py_adaptive_loss_forward, py::arg("h"), py::arg("head_weight"),
          py::arg("head_bias"), py::arg("proj_weights"), py::arg("out_weights"), py::arg("targets"));
    m.def("adaptive_loss_forward_backward", &py_adaptive_loss_forward_backward, py::arg("h"), py::arg("head_weight"),
          py::arg("head_bias"), py::arg("proj_weights"), py::arg("out_weights"), py::arg("targets"));
    m.def("adaptive_log_prob", &py_adaptive_log_prob, py::arg("h"), py::arg("head_weight"), py::arg("head_bias"),
          py::arg("proj_weights"), py::arg("out_weights"));
    m.def("adam_update", &py_adam_update, py::arg("param"), py::arg("grad"), py::arg("m"), py::arg("v"),
          py::arg("step"), py::arg("lr"), py::arg("beta1") = 0.9, py::arg("beta2") = 0.999, py::arg("eps") = 1e-8,
          py::arg("weight_decay") = 0.0);
    m.def("adam_update_rows", &py_adam_update_rows, py::arg("param"), py::arg("rows"), py::arg("grad"), py::arg("m"),
          py::arg("v"), py::arg("step"), py::arg("lr"), py::arg("beta1") = 0.9, py::arg("beta2") = 0.999,
          py::arg("eps") = 1e-8, py::arg("weight_decay") = 0.0);
    m.def("embedding_backward_sparse", &py_embedding_backward_sparse, py::arg("dout"), py::arg("ids"));
    m.def("sparse_adam_update", &py_sparse_adam_update, py::arg("param"), py::arg("rows"), py::arg("grad"),
          py::arg("m"), py::arg("v"), py::arg("slots"), py::arg("step"), py::arg("lr"), py::arg("beta1") = 0.9,
          py::arg("beta2") = 0.999, py::arg("eps") = 1e-8);
    m.def("sparse_sgd_update", &py_sparse_sgd_update, py::arg("param"), py::arg("rows"), py::arg("grad"),
          py::arg("lr"));
    m.def("sgd_update", &py_sgd_update, py::arg("param"), py::arg("grad"), py::arg("buf"), py::arg("step"),
          py::arg("lr"), py::arg("momentum") = 0.0, py::arg("weight_decay") = 0.0, py::arg("nesterov") = false);
    m.def("sgd_update_rows", &py_sgd_update_rows, py::arg("param"), py::arg("rows"), py::arg("grad"), py::arg("buf"),
          py::arg("step"), py::arg("lr"), py::arg("momentum") = 0.0, py::arg("weight_decay") = 0.0,
          py::arg("nesterov") = false, py::arg("skip_absent_rows") = false);
    m.def("clip_grad_norm", &py_clip_grad_norm, py::arg("grads"), py::arg("max_norm"));
    m.def("clip_grad_norm_rows", &py_clip_grad_norm_rows, py::arg("grads"), py::arg("max_norm"));
    m.def("clipped_sgd_update", &py_clipped_sgd_update, py::arg("params"), py::arg("grads"), py::arg("bufs"),
          py::arg("step"), py::arg("lr"), py::arg("max_norm"), py::arg("momentum") = 0.0,
          py::arg("weight_decay") = 0.0, py::arg("nesterov") = false, py::arg("skip_absent_rows") = false);
    m.def("windows", &py_windows, py::arg("ids"), py::arg("seq_len"), py::arg("stride") = 1);
    m.def("gather_windows", &py_gather_windows, py::arg("ids"), py::arg("starts"), py::arg("seq_len"));
    m.def("generate", &py_generate, py::arg("params"), py::arg("num_layers"), py::arg("prompt"),
          py::arg("max_new_tokens"), py::arg("temperature") = 1.0, py::arg("top_k") = 0, py::arg("top_p") = 1.0,
          py::arg("seed") = 0, py::arg("suppressed") = -1);
    py::class_<PySession>(m, "GenerationSession",
                          "A generation in progress: next(count) continues it, probabilities() gives the "
                          "next-token distribution; the same tokens as generate() with the same arguments.")
        .def(py::init<const py::dict&, int64_t, const py::handle&, double, int64_t, double, uint64_t, int64_t>(),
             py::arg("params"), py::arg("num_layers"), py::arg("prompt"), py::arg("temperature") = 1.0,
             py::arg("top_k") = 0, py::arg("top_p") = 1.0, py::arg("seed") = 0, py::arg("suppressed") = -1)
        .def("next", &PySession::next, py::arg("count"))
        .def("probabilities", &PySession::probabilities);
    m.def("score_sequences", &py_score_sequences, py::arg("params"), py::arg("num_layers"), py::arg("ids"),
          py::arg("offsets"), py::arg("bos") = -1, py::arg("batch_size") = 256);
    m.def("score_streams", &py_score_streams, py::arg("params"), py::arg("num_layers"), py::arg("x"), py::arg("y"),
          py::arg("h0") = py::none(), py::arg("c0") = py::none());
    m.def("output_scores", &py_output_scores, py::arg("h"), py::arg("weight"), py::arg("bias"), py::arg("targets"));
    m.def("prediction_counts", &py_prediction_counts, py::arg("targets"), py::arg("predictions"),
          py::arg("vocab_size"));
    m.def("fma_peak_gflops", &py_fma_peak_gflops, py::arg("seconds") = 0.5,
          "The float32 FMA peak of this machine in GFLOP/s, measured for about `seconds` on "
          "every thread (get_num_threads()) with the SIMD width the kernels were built for.");
    m.def("set_num_threads", &set_num_threads, py::arg("n"));
    m.def("get_num_threads", &get_num_threads);
    m.def("_kernel_team_size", &py_kernel_team_size,
          "The number of threads a kernel called from the calling thread runs on (for tests).");
    m.def("build_info", &build_info);
    m.def("tune_malloc", &tune_malloc,
          "Keep freed blocks of up to 32 MiB in glibc's heap, process wide; returns whether that is in force. "
          "fastlm calls it on import unless FASTLM_MALLOC_TUNING=0 (see fastlm/_environment.py).");
}
