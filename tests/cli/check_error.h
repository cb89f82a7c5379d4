// What every command-line error must look like: a non-zero exit, one line on stderr starting "zoo: error: ".
#pragma once

#include "tests/helpers.h"

#include <catch2/catch.hpp>

#include <string>

namespace zoo::test {

/// Checks that `r` failed with one line naming `expected` (and exit `code`, when given).
inline void check_error(const CommandResult& r, const std::string& expected, int code = -1) {
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  CHECK(r.code != 0);
  if (code >= 0) CHECK(r.code == code);
  CHECK(r.err.find(expected) != std::string::npos);
  CHECK(count_lines(r.err) == 1);
  CHECK(r.err.rfind("zoo: error: ", 0) == 0);
}

}  // namespace zoo::test
