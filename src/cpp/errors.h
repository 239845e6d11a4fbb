// Errors the kernels report by exception; the bindings turn each into its Python type.
#pragma once

#include <stdexcept>
#include <string>

namespace fastlm {

// A kernel met NaN or infinity where a result must be finite (FloatingPointError):
// returning it would be silent garbage, e.g. a sampler that picks the last id forever.
struct NonFiniteError : std::runtime_error {
    explicit NonFiniteError(const std::string& what) : std::runtime_error(what) {}
};

// A long loop stopped because the caller asked it to (Ctrl-C); the reason (the Python
// exception a signal handler raised) is the caller's to report.
struct Interrupted : std::exception {
    const char* what() const noexcept override { return "interrupted"; }
};

}  // namespace fastlm
