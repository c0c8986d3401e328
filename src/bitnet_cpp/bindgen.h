/* Input of the bindgen run that wrote sys.rs (regenerate with bindgen.sh).
 * llama.h is the public API of bitnet.cpp's llama.cpp fork; ggml-quants.h
 * (internal to ggml) declares the I2_S kernels that ggml-bitnet-mad.cpp
 * defines. */
#include "llama.h"
#include "ggml-quants.h"
