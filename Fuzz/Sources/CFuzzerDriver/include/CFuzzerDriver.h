// libFuzzer's entry for programs that have their own main (compiler-rt's
// FuzzerInterface.h). SwiftPM names an executable target's entry point
// <module>_main and points `main` at it, so libFuzzer's own main is never
// linked: each target's main.swift hands its callback to this driver.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef int (*FuzzerTestOneInput)(const uint8_t *data, size_t size);
int LLVMFuzzerRunDriver(int *argc, char ***argv, FuzzerTestOneInput callback);
