// ternctl: command-line client of ternd (see cli/ternctl.h and cli/README.md).
#include <unistd.h>

#include <iostream>

#include "cli/ternctl.h"

int main(int argc, char** argv) {
  return tern::cli::RunTernctl(argc, argv, std::cout, std::cerr, ::isatty(STDOUT_FILENO) == 1);
}
