// Argument checks of the kernels built on the LibTorch stable ABI (fastlayers._C). Their exceptions cross into
// torch as plain C++ exceptions, which torch's Python binding maps by type: std::invalid_argument -> ValueError,
// std::out_of_range -> IndexError, anything else -> RuntimeError. No standard exception maps to TypeError, so a
// wrong dtype reaching a raw torch.ops call is a ValueError (the public functions check dtypes in Python first and
// raise TypeError). Never throw from inside torch::stable::parallel_for: the shim turns it into a RuntimeError
// that has lost its type; record the failure and throw after the loop.
#pragma once
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

namespace fastlayers::errors {

template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream out;
  ((out << args), ...);
  return std::move(out).str();
}

// "[2, 3]", as ATen prints sizes, for any array ref (sizes(), strides(), std::vector<int64_t>).
template <typename Ref>
std::string list(const Ref& r) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < size_t(r.size()); ++i) out << (i ? ", " : "") << r[i];
  out << ']';
  return std::move(out).str();
}

}  // namespace fastlayers::errors

#define FL_THROW_IF_NOT(cond, Exc, ...) \
  do {                                  \
    if (!(cond)) throw Exc(::fastlayers::errors::concat(__VA_ARGS__)); \
  } while (0)
#define FL_CHECK(cond, ...) FL_THROW_IF_NOT(cond, std::runtime_error, __VA_ARGS__)
#define FL_CHECK_VALUE(cond, ...) FL_THROW_IF_NOT(cond, std::invalid_argument, __VA_ARGS__)
#define FL_CHECK_TYPE(cond, ...) FL_THROW_IF_NOT(cond, std::invalid_argument, __VA_ARGS__)
#define FL_CHECK_INDEX(cond, ...) FL_THROW_IF_NOT(cond, std::out_of_range, __VA_ARGS__)
