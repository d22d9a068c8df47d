#include "cli/cli.h"

int main(int argc, char** argv) { return regfs::RegfsMain(argc, argv); }
