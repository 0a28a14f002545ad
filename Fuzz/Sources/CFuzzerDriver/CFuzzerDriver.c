// Declarations only; libFuzzer (-sanitize=fuzzer) provides LLVMFuzzerRunDriver.
#include "CFuzzerDriver.h"
