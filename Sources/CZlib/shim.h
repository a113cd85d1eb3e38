#ifndef TENURE_CZLIB_SHIM_H
#define TENURE_CZLIB_SHIM_H
#include <zlib.h>

/* inflateInit2 is a macro; Swift sees this function instead. */
static inline int tenure_inflate_init(z_stream *stream, int windowBits) {
    return inflateInit2(stream, windowBits);
}
#endif
