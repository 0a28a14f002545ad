#include <libaio.h>
